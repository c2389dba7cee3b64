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

from shared.contract_calendar import tokyo_date
from shared.events import StrictCancellationForm, WithdrawalRequested
from shared.messaging.consumer import store_transaction
from shared.messaging.outbox import Emitter
from shared.service import Runtime
from shared.vocabulary import RequestStatus

from .domain import IdempotencyConflict, withdrawal_refusal
from .settings import IntakeSettings
from .store import IntakeStore, new_request, request_view, request_view_by_submission


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
        new = new_request(form, source="http", submission_id=idempotency_key, received_at=runtime.clock.now())
        try:
            async with store_transaction(runtime, IntakeStore) as store:
                recorded = await store.record(new)
                if recorded.created:
                    Emitter(store.outbox, runtime.name, correlation_id=new.request_id)(
                        new.requested(), key=form.contract_id)
        except IdempotencyConflict as exc:
            return _error("Idempotency-Key", str(exc).split(": ", 1)[1], "idempotency_conflict")
        return Received(request_id=recorded.request_id, status=RequestStatus.received,
                        status_url=status_url(recorded.request_id))

    @app.get("/v1/cancellations", response_model=StatusView, dependencies=auth, tags=["cancellations"],
             summary="Find a request by the upstream submission_id (Kafka) or Idempotency-Key (HTTP)",
             responses={404: {"model": ErrorBody}})
    async def find(submission_id: Annotated[str, Query(min_length=1, max_length=200, pattern=PRINTABLE)]) -> Any:
        row = await request_view_by_submission(runtime.pool, submission_id)
        if row is None:
            raise HTTPException(404, detail=f"no request for submission {submission_id}")
        return _view(row)

    @app.get("/v1/cancellations/{request_id}", response_model=StatusView, dependencies=auth,
             tags=["cancellations"], summary="The status of a request", responses={404: {"model": ErrorBody}})
    async def status(request_id: Annotated[str, Path(max_length=100, pattern=PRINTABLE)]) -> Any:
        row = await request_view(runtime.pool, request_id)
        if row is None:
            raise HTTPException(404, detail=f"request {request_id} not found")
        return _view(row)

    @app.post("/v1/cancellations/{request_id}/withdraw", status_code=202, response_model=Received,
              dependencies=auth, tags=["cancellations"], summary="Withdraw a request before its effective date",
              responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    async def withdraw(request_id: Annotated[str, Path(max_length=100, pattern=PRINTABLE)]) -> Any:
        now = runtime.clock.now()
        async with store_transaction(runtime, IntakeStore) as store:
            row = await store.for_withdrawal(request_id)
            if row is None:
                raise HTTPException(404, detail=f"request {request_id} not found")
            refused = withdrawal_refusal(row.status, row.effective_date, today=tokyo_date(now))
            if refused is not None:
                return JSONResponse(ErrorBody(error=refused).model_dump(), status_code=409)
            if row.withdrawal_requested_at is None:  # asking twice is one withdrawal
                await store.withdrawal_requested(request_id, now)
                Emitter(store.outbox, runtime.name, correlation_id=request_id)(WithdrawalRequested(
                    request_id=request_id, contract_id=row.contract_id, requested_at=now), key=row.contract_id)
        return Received(request_id=request_id, status=row.status, status_url=status_url(request_id))


def _view(row) -> StatusView:
    return StatusView(**{k: row[k] for k in StatusView.model_fields if k in row.keys()})


def _error(field: str, message: str, type_: str) -> JSONResponse:
    body = ErrorBody(error="validation_failed", errors=[FieldError(field=field, message=message, type=type_)])
    return JSONResponse(body.model_dump(), status_code=422)
