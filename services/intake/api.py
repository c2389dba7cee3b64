"""intake's HTTP API (SPEC section 2). OpenAPI at /docs."""

from __future__ import annotations

import hmac
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from pydantic import BaseModel

from shared.contract_calendar import tokyo_date
from shared.events import StrictCancellationForm, WithdrawalRequested
from shared.messaging.consumer import store_transaction
from shared.messaging.outbox import Emitter
from shared.service import Runtime
from shared.vocabulary import RequestStatus

from .domain import IdempotencyConflict, withdrawal_refusal
from .problems import FieldError, install_handlers, problem, problem_openapi, responses
from .settings import IntakeSettings
from .signatures import SignatureRefused, SignatureReplayed, remembered_until, verify
from .store import IntakeStore, first_use_of_signature, new_request, request_view, request_view_by_submission


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


def install(runtime: Runtime, app: FastAPI) -> None:
    settings: IntakeSettings = runtime.settings  # type: ignore[assignment]
    app.title = "cancelflow intake"
    app.description = "Takes cancellation requests, answers their status, takes withdrawals."
    keys = [k.encode() for k in settings.api_key_list()]

    install_handlers(app)
    problem_openapi(app)

    async def authenticate(request: Request, x_api_key: Annotated[str | None, Header()] = None,
                           x_signature: Annotated[str | None, Header()] = None) -> None:
        """X-API-Key (any configured key, compared in constant time) or a signed body (`signatures`)."""
        if x_api_key is not None:
            given = x_api_key.encode()
            # Compare with every key so the time taken does not tell which one nearly matched.
            if any([hmac.compare_digest(given, k) for k in keys]):
                return
        if x_signature is not None and settings.webhook_secret is not None:
            now, tolerance = runtime.clock.now(), settings.signature_tolerance_s
            try:
                signature = verify(settings.webhook_secret.get_secret_value(), x_signature, await request.body(),
                                   now, tolerance)
                if not await first_use_of_signature(runtime.pool, signature.digests[0],
                                                    remembered_until(signature, tolerance), now):
                    raise SignatureReplayed
            except SignatureRefused as exc:
                raise HTTPException(401, detail=str(exc), headers={"WWW-Authenticate": "ApiKey"}) from None
            return
        raise HTTPException(401, detail="missing or invalid X-API-Key (or X-Signature)",
                            headers={"WWW-Authenticate": "ApiKey"})

    auth = [Depends(authenticate)]

    def status_url(request_id: str) -> str:
        return f"{settings.public_url.rstrip('/')}/v1/cancellations/{request_id}"

    @app.post("/v1/cancellations", status_code=202, response_model=Received, dependencies=auth,
              tags=["cancellations"], summary="Submit the cancellation form",
              responses=responses(400, 401, 422, s422="Invalid input (`errors` names each field), or an "
                                  "Idempotency-Key used before with a different body (`errors[0].field` is "
                                  "Idempotency-Key, `type` idempotency_conflict)"))
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

    @app.post("/v1/cancellations/{request_id}/withdraw", status_code=202, response_model=Received,
              dependencies=auth, tags=["cancellations"], summary="Withdraw a request before its effective date",
              responses=responses(401, 404, 409, 422))
    async def withdraw(request_id: Annotated[str, Path(max_length=100, pattern=PRINTABLE)]) -> Any:
        now = runtime.clock.now()
        async with store_transaction(runtime, IntakeStore) as store:
            row = await store.for_withdrawal(request_id)
            if row is None:
                raise HTTPException(404, detail=f"request {request_id} not found")
            refused = withdrawal_refusal(row.status, row.effective_date, today=tokyo_date(now))
            if refused is not None:
                return problem(409, refused)
            if row.withdrawal_requested_at is None:  # asking twice is one withdrawal
                await store.withdrawal_requested(request_id, now)
                Emitter(store.outbox, runtime.name, correlation_id=request_id)(WithdrawalRequested(
                    request_id=request_id, contract_id=row.contract_id, requested_at=now), key=row.contract_id)
        return Received(request_id=request_id, status=row.status, status_url=status_url(request_id))


def _view(row) -> StatusView:
    return StatusView(**{k: row[k] for k in StatusView.model_fields if k in row.keys()})


def _error(field: str, message: str, type_: str) -> Any:
    return problem(422, message, errors=[FieldError(field=field, message=message, type=type_)])
