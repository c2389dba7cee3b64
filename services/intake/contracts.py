"""intake's view of the contracts (from `contracts.events`), and what a quote is computed from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import asyncpg

from shared import topics
from shared.consumer import Context
from shared.contract_rules import ContractTerms
from shared.events import ContractSigned, Customer, PaymentRecorded
from shared.service import Runtime, Subscription


async def on_contract_signed(ctx: Context, e: ContractSigned) -> None:
    ctx.defer(
        "INSERT INTO contracts (contract_id, account_id, plan, monthly_fee_jpy, start_date, customer)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (contract_id) DO UPDATE SET account_id = excluded.account_id,"
        " plan = excluded.plan, monthly_fee_jpy = excluded.monthly_fee_jpy, start_date = excluded.start_date,"
        " customer = coalesce(excluded.customer, contracts.customer), updated_at = now()",
        e.contract_id, e.account_id, e.plan.value, e.monthly_fee_jpy, e.start_date,
        e.customer.model_dump(mode="json") if e.customer else None)


async def on_payment_recorded(ctx: Context, e: PaymentRecorded) -> None:
    # Keyed by billing date, as billing keys them: the same payment recorded twice is one payment.
    ctx.defer("INSERT INTO payments (contract_id, billing_date) VALUES ($1, $2) ON CONFLICT DO NOTHING",
              e.contract_id, e.billing_date)


def contract_subscriptions(rt: Runtime) -> list[Subscription]:
    return [Subscription(topics=(topics.CONTRACTS,), handlers={ContractSigned.event_type: on_contract_signed,
                                                               PaymentRecorded.event_type: on_payment_recorded})]


@dataclass(frozen=True)
class ContractState:
    """A contract as the quote sees it: its terms, its paid billing dates, and its cancellations."""

    terms: ContractTerms
    account_id: str
    plan: str
    customer: Customer | None
    paid_billing_dates: frozenset[date]
    pending_request_id: str | None

    @property
    def has_pending(self) -> bool:
        return self.pending_request_id is not None


# Pending: an accepted cancellation not withdrawn nor completed; ended: one completed (the status view).
_STATE = ("SELECT c.*, ARRAY(SELECT p.billing_date FROM payments p WHERE p.contract_id = c.contract_id) AS paid,"
          " (SELECT r.request_id FROM requests r WHERE r.contract_id = c.contract_id AND r.status = 'accepted'"
          " LIMIT 1) AS pending,"
          " EXISTS (SELECT 1 FROM requests r WHERE r.contract_id = c.contract_id AND r.status = 'completed')"
          " AS ended"
          " FROM contracts c WHERE c.contract_id = $1")


async def load_contract(conn: asyncpg.Connection | asyncpg.Pool, contract_id: str) -> ContractState | None:
    row = await conn.fetchrow(_STATE, contract_id)
    if row is None:
        return None
    ended = row["ended"]
    return ContractState(
        terms=ContractTerms(contract_id=row["contract_id"], start_date=row["start_date"],
                            monthly_fee_jpy=row["monthly_fee_jpy"], ended=ended),
        account_id=row["account_id"], plan=row["plan"],
        customer=Customer.model_validate(row["customer"]) if row["customer"] else None,
        paid_billing_dates=frozenset(row["paid"]), pending_request_id=None if ended else row["pending"])
