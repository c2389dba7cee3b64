"""intake's HTTP API (SPEC section 2). OpenAPI at /docs."""

from __future__ import annotations

import hashlib
import hmac
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from shared.events import StrictCancellationForm
from shared.service import Runtime
from shared.vocabulary import RequestStatus

from .settings import IntakeSettings
from .domain import RefuseWithdrawal
from .store import IdempotencyConflict, ask_withdrawal, record_request


# Printable text only: PostgreSQL cannot store NUL, and control characters have no place in an id.
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. customer.email")
    message: str
    type: str


class ErrorBody(BaseModel):
    error: str
    errors: list[FieldError] = []


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


def _field_errors(errors: list[dict], drop_first: set[str]) -> list[FieldError]:
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in drop_first:
            loc = loc[1:]
        out.append(FieldError(field=".".join(loc) or "body", message=err.get("msg", "invalid"),
                              type=err.get("type", "value_error")))
    return out


def install(runtime: Runtime, app: FastAPI) -> None:
    settings: IntakeSettings = runtime.settings  # type: ignore[assignment]
    app.title = "cancelflow intake"
    app.description = "Takes cancellation requests, answers their status, takes withdrawals."
    keys = [k.encode() for k in settings.api_key_list()]

    @app.exception_handler(RequestValidationError)
    async def validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(list(exc.errors()), {"body", "header", "path", "query"})
        return JSONResponse(ErrorBody(error="validation_failed", errors=errors).model_dump(), status_code=422)

    async def authenticate(request: Request, x_api_key: Annotated[str | None, Header()] = None,
                           x_signature: Annotated[str | None, Header()] = None) -> None:
        """X-API-Key (any configured key, compared in constant time) or an HMAC-SHA256 signed body."""
        if x_api_key is not None:
            given = x_api_key.encode()
            # Compare with every key so the time taken does not tell which one nearly matched.
            if any([hmac.compare_digest(given, k) for k in keys]):
                return
        if x_signature is not None and settings.webhook_secret:
            expected = "sha256=" + hmac.new(settings.webhook_secret.encode(), await request.body(),
                                            hashlib.sha256).hexdigest()
            if hmac.compare_digest(x_signature.encode(), expected.encode()):
                return
        raise HTTPException(401, detail="missing or invalid X-API-Key (or X-Signature)",
                            headers={"WWW-Authenticate": "ApiKey"})

    auth = [Depends(authenticate)]

    def status_url(request_id: str) -> str:
        return f"{settings.public_url.rstrip('/')}/v1/cancellations/{request_id}"

    @app.post("/v1/cancellations", status_code=202, response_model=Received, dependencies=auth,
              tags=["cancellations"], summary="Submit the cancellation form",
              responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}})
    async def submit(form: StrictCancellationForm,
                     idempotency_key: Annotated[str | None, Header(max_length=200, pattern=PRINTABLE)] = None) -> Any:
        try:
            async with runtime.pool.acquire() as conn:
                recorded = await record_request(conn, form, source="http", submission_id=idempotency_key,
                                                received_at=runtime.clock.now())
        except IdempotencyConflict as exc:
            return _error("Idempotency-Key", str(exc).split(": ", 1)[1], "idempotency_conflict")
        return Received(request_id=recorded.request_id, status=RequestStatus.received,
                        status_url=status_url(recorded.request_id))

    @app.get("/v1/cancellations", response_model=StatusView, dependencies=auth, tags=["cancellations"],
             summary="Find a request by the upstream submission_id (Kafka) or Idempotency-Key (HTTP)",
             responses={404: {"model": ErrorBody}})
    async def find(submission_id: Annotated[str, Query(min_length=1, max_length=200, pattern=PRINTABLE)]) -> Any:
        row = await runtime.pool.fetchrow(
            "SELECT * FROM requests WHERE submission_id = $1 ORDER BY source = 'kafka' DESC LIMIT 1", submission_id)
        if row is None:
            raise HTTPException(404, detail=f"no request for submission {submission_id}")
        return _view(row)

    @app.get("/v1/cancellations/{request_id}", response_model=StatusView, dependencies=auth,
             tags=["cancellations"], summary="The status of a request", responses={404: {"model": ErrorBody}})
    async def status(request_id: Annotated[str, Path(max_length=100, pattern=PRINTABLE)]) -> Any:
        row = await runtime.pool.fetchrow("SELECT * FROM requests WHERE request_id = $1", request_id)
        if row is None:
            raise HTTPException(404, detail=f"request {request_id} not found")
        return _view(row)

    async def ask(request_id: str, taken_offer: str | None) -> Any:
        async with runtime.pool.acquire() as conn:
            outcome = await ask_withdrawal(conn, request_id, taken_offer=taken_offer, now=runtime.clock.now())
        if outcome is None:
            raise HTTPException(404, detail=f"request {request_id} not found")
        if isinstance(outcome.answer, RefuseWithdrawal):
            return JSONResponse(ErrorBody(error=outcome.answer.why).model_dump(), status_code=409)
        return Received(request_id=request_id, status=RequestStatus(outcome.status), status_url=status_url(request_id))

    @app.post("/v1/cancellations/{request_id}/withdraw", status_code=202, response_model=Received,
              dependencies=auth, tags=["cancellations"], summary="Withdraw a request before its effective date",
              responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    async def withdraw(request_id: Annotated[str, Path(max_length=100, pattern=PRINTABLE)]) -> Any:
        return await ask(request_id, None)

    @app.post("/v1/cancellations/{request_id}/offers/{offer}/take", status_code=202, response_model=Received,
              dependencies=auth, tags=["cancellations"], summary="Take a retention offer: the request is withdrawn "
              "with that offer recorded", responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
              description="`409` when the offer is not among the request's offers, the request is not `accepted`, "
                          "or its effective date has come. Taking the same offer twice is one take.")
    async def take_offer(request_id: Annotated[str, Path(max_length=100, pattern=PRINTABLE)],
                         offer: Annotated[str, Path(max_length=64, pattern=PRINTABLE,
                                                    description="One of the request's `offers`.")]) -> Any:
        return await ask(request_id, offer)


def _view(row) -> StatusView:
    return StatusView(**{k: row[k] for k in StatusView.model_fields if k in row.keys()})


def _error(field: str, message: str, type_: str) -> JSONResponse:
    body = ErrorBody(error="validation_failed", errors=[FieldError(field=field, message=message, type=type_)])
    return JSONResponse(body.model_dump(), status_code=422)
