"""The quote (SPEC section 7) and the signed links to the customer's cancel page.

`GET /v1/contracts/{contract_id}/cancellation-quote` answers what a submission made now would get,
computed by `domain.quote`: the functions eligibility decides with and billing settles with.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query
from pydantic import BaseModel, Field

from services.eligibility.domain import offer_policy_from_json
from shared.contract_calendar import tokyo_date
from shared.events import Id
from shared.service import Runtime
from shared.vocabulary import Offer, Reason, RejectionCode

from .auth import api_key_matches, authenticator
from .domain import Quote, quote
from .links import InvalidLink, sign_link, verify_link
from .problems import responses
from .settings import IntakeSettings
from .store import ContractState, contract_state


class ChargeView(BaseModel):
    billing_date: date
    amount_jpy: int


class QuoteView(BaseModel):
    contract_id: str
    received_on: date = Field(description="Today in Tokyo: a submission made today is received on this date.")
    earliest_effective_date: date | None
    effective_date: date | None = Field(description="The desired date, else the earliest.")
    codes: list[RejectionCode] = Field(description="Why a submission with these inputs would be rejected; [] if not.")
    first_anniversary: date
    charges: list[ChargeView]
    total_jpy: int
    refund_jpy: int = 0
    paid_through: date | None
    offers: list[Offer]
    access_ends_on: date | None = Field(description="From this date the admin console is closed (accepted only).")


def quote_view(contract_id: str, q: Quote) -> QuoteView:
    s = q.settlement
    return QuoteView(
        contract_id=contract_id, received_on=q.received_on, earliest_effective_date=q.earliest_effective_date,
        effective_date=q.effective_date, codes=list(q.codes), first_anniversary=q.first_anniversary,
        charges=[ChargeView(billing_date=c.billing_date, amount_jpy=c.amount_jpy) for c in s.charges] if s else [],
        total_jpy=s.total_jpy if s else 0, refund_jpy=0, paid_through=s.paid_through if s else None,
        offers=list(q.offers), access_ends_on=q.access_ends_on)


class Quoter:
    """Quotes for intake's view of a contract, with the offer policy and holdout eligibility decides with."""

    def __init__(self, runtime: Runtime) -> None:
        settings: IntakeSettings = runtime.settings  # type: ignore[assignment]
        self.runtime = runtime
        self.policy = offer_policy_from_json(settings.offer_policy_json)
        self.holdout_percent = settings.offer_holdout_percent

    async def contract(self, contract_id: str) -> ContractState | None:
        return await contract_state(self.runtime.pool, contract_id)

    def quote(self, state: ContractState, *, desired_effective_date: date | None, reason: Reason | None) -> Quote:
        return quote(contract=state.terms, received_on=tokyo_date(self.runtime.clock.now()),
                     desired_effective_date=desired_effective_date, has_pending=state.has_pending, reason=reason,
                     paid_billing_dates=state.paid_billing_dates, offer_policy=self.policy,
                     holdout_percent=self.holdout_percent)


class LinkAsked(BaseModel):
    contract_id: Id
    ttl_days: int | None = Field(None, ge=1, le=90, description="Validity; INTAKE_LINK_TTL_DAYS when absent.")


class LinkIssued(BaseModel):
    url: str
    expires_at: datetime


def install_quote(runtime: Runtime, app: FastAPI) -> Quoter:
    settings: IntakeSettings = runtime.settings  # type: ignore[assignment]
    quoter = Quoter(runtime)
    secret = settings.link_secret.get_secret_value() if settings.link_secret else None

    async def key_or_link(contract_id: Annotated[Id, Path()],
                          x_api_key: Annotated[str | None, Header()] = None,
                          token: Annotated[str | None, Query(max_length=400,
                                                             description="The page's signed link token")] = None
                          ) -> None:
        if api_key_matches(settings, x_api_key):
            return
        if token and secret:
            try:
                if verify_link(secret, token, runtime.clock.now()).contract_id == contract_id:
                    return
            except InvalidLink:
                pass
        raise HTTPException(401, detail="missing or invalid X-API-Key (or link token)",
                            headers={"WWW-Authenticate": "ApiKey"})

    @app.get("/v1/contracts/{contract_id}/cancellation-quote", response_model=QuoteView,
             dependencies=[Depends(key_or_link)], tags=["contracts"],
             summary="What a cancellation submitted today would get: decision, final charge, paid through",
             responses=responses(401, 404, 422, s404="Unknown contract"))
    async def cancellation_quote(contract_id: Annotated[Id, Path(description="The contract's id")],
                                 desired_effective_date: date | None = None, reason: Reason | None = None) -> Any:
        state = await quoter.contract(contract_id)
        if state is None:
            raise HTTPException(404, detail=f"contract {contract_id} not found")
        return quote_view(contract_id, quoter.quote(state, desired_effective_date=desired_effective_date,
                                                    reason=reason))

    @app.post("/v1/cancel-links", response_model=LinkIssued, dependencies=[Depends(authenticator(runtime))],
              tags=["contracts"], summary="A signed link to the customer's cancel page for a contract",
              responses=responses(400, 401, 404, 422, 503, s404="Unknown contract",
                                  s503="INTAKE_LINK_SECRET is not set: no links can be signed"))
    async def cancel_link(body: LinkAsked) -> Any:
        if secret is None:
            raise HTTPException(503, detail="INTAKE_LINK_SECRET is not set: no cancel links can be signed")
        if await quoter.contract(body.contract_id) is None:
            raise HTTPException(404, detail=f"contract {body.contract_id} not found")
        expires_at = runtime.clock.now() + timedelta(days=body.ttl_days or settings.link_ttl_days)
        token = sign_link(secret, body.contract_id, expires_at)
        return LinkIssued(url=f"{settings.public_url.rstrip('/')}/cancel/{token}",
                          expires_at=expires_at.replace(microsecond=0))

    return quoter
