"""intake's HTTP API (SPEC section 2). OpenAPI at /docs."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query
from pydantic import BaseModel, Field

from shared.events import StrictCancellationForm
from shared.service import Runtime
from shared.vocabulary import RequestStatus

from .actions import ask_withdrawal, submit_form
from .auth import authenticator
from .domain import IdempotencyConflict
from .problems import FieldError, install_handlers, problem, problem_openapi, responses
from .settings import IntakeSettings
from .store import request_view, request_view_by_submission


# Printable text only: PostgreSQL cannot store NUL, and control characters have no place in an id.
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class Received(BaseModel):
    request_id: str
    status: RequestStatus
    status_url: str


class NotificationView(BaseModel):
    kind: str
    channel: str
    recipient: str
    sent_at: datetime
    due_at: datetime | None = None


class StatusView(BaseModel):
    request_id: str
    contract_id: str
    status: RequestStatus
    received_at: datetime
    received_on: date
    effective_date: date | None
    codes: list[str]
    earliest_effective_date: date | None
    offers: list[str]
    settlement: dict[str, Any] | None
    notifications: list[NotificationView]
    withdrawal_requested_at: datetime | None = None
    withdrawal_refused: str | None = None
    taken_offer: str | None = Field(None, description="The offer the request was withdrawn with (SPEC section 6).")


def install(runtime: Runtime, app: FastAPI) -> None:
    settings: IntakeSettings = runtime.settings  # type: ignore[assignment]
    app.title = "cancelflow intake"
    app.description = "Takes cancellation requests, answers their status, takes withdrawals."

    install_handlers(app)
    problem_openapi(app)

    auth = [Depends(authenticator(runtime))]

    def status_url(request_id: str) -> str:
        return f"{settings.public_url.rstrip('/')}/v1/cancellations/{request_id}"

    @app.post("/v1/cancellations", status_code=202, response_model=Received, dependencies=auth,
              tags=["cancellations"], summary="Submit the cancellation form",
              responses=responses(400, 401, 422, s422="Invalid input (`errors` names each field), or an "
                                  "Idempotency-Key used before with a different body (`errors[0].field` is "
                                  "Idempotency-Key, `type` idempotency_conflict)"))
    async def submit(form: StrictCancellationForm,
                     idempotency_key: Annotated[str | None, Header(max_length=200, pattern=PRINTABLE)] = None) -> Any:
        try:
            recorded = await submit_form(runtime, form, submission_id=idempotency_key)
        except IdempotencyConflict as exc:
            return _error("Idempotency-Key", str(exc).split(": ", 1)[1], "idempotency_conflict")
        return Received(request_id=recorded.request_id, status=RequestStatus.received,
                        status_url=status_url(recorded.request_id))

    @app.get("/v1/cancellations", response_model=StatusView, dependencies=auth, tags=["cancellations"],
             summary="Find a request by the upstream submission_id (Kafka) or Idempotency-Key (HTTP)",
             responses=responses(401, 404, 422))
    async def find(submission_id: Annotated[str, Query(min_length=1, max_length=200, pattern=PRINTABLE)]) -> Any:
        row = await request_view_by_submission(runtime.pool, submission_id)
        if row is None:
            raise HTTPException(404, detail=f"no request for submission {submission_id}")
        return _view(row)

    @app.get("/v1/cancellations/{request_id}", response_model=StatusView, dependencies=auth,
             tags=["cancellations"], summary="The status of a request", responses=responses(401, 404, 422))
    async def status(request_id: Annotated[str, Path(max_length=100, pattern=PRINTABLE)]) -> Any:
        row = await request_view(runtime.pool, request_id)
        if row is None:
            raise HTTPException(404, detail=f"request {request_id} not found")
        return _view(row)

    async def ask(request_id: str, taken_offer: str | None) -> Any:
        """A withdrawal, taking `taken_offer` or none: 404, 409 with the reason, or 202 (asked now or before)."""
        asked = await ask_withdrawal(runtime, request_id, taken_offer)
        if not asked.found:
            raise HTTPException(404, detail=f"request {request_id} not found")
        if asked.refused is not None:
            return problem(409, asked.refused)
        return Received(request_id=request_id, status=asked.status, status_url=status_url(request_id))

    @app.post("/v1/cancellations/{request_id}/withdraw", status_code=202, response_model=Received,
              dependencies=auth, tags=["cancellations"], summary="Withdraw a request before its effective date",
              responses=responses(401, 404, 409, 422))
    async def withdraw(request_id: Annotated[str, Path(max_length=100, pattern=PRINTABLE)]) -> Any:
        return await ask(request_id, None)

    @app.post("/v1/cancellations/{request_id}/offers/{offer}/take", status_code=202, response_model=Received,
              dependencies=auth, tags=["cancellations"], summary="Take a retention offer: the request is withdrawn "
              "with that offer recorded", responses=responses(401, 404, 409, 422),
              description="`409` when the offer is not among the request's offers, the request is not `accepted`, "
                          "or its effective date has come. Taking the same offer twice is one take.")
    async def take_offer(request_id: Annotated[str, Path(max_length=100, pattern=PRINTABLE)],
                         offer: Annotated[str, Path(max_length=64, pattern=PRINTABLE,
                                                    description="One of the request's `offers`.")]) -> Any:
        return await ask(request_id, offer)


def _view(row) -> StatusView:
    return StatusView(**{k: row[k] for k in StatusView.model_fields if k in row.keys()})


def _error(field: str, message: str, type_: str) -> Any:
    return problem(422, message, errors=[FieldError(field=field, message=message, type=type_)])
