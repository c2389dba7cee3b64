"""intake's rule for a withdrawal asked over HTTP or Kafka: ask eligibility for it, answer that it was asked
already, or refuse it now (the HTTP API's 409, the submission's dead-letter reason).

Pure: the status view's row as values in, a decision out. Whether an offer can be taken at all is
eligibility's rule (`withdrawal_refusal`), used here as is, never copied: intake refuses early what
eligibility would refuse anyway, so the customer hears at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from services.eligibility.domain import can_withdraw, withdrawal_refusal

__all__ = ["AskWithdrawal", "AskedBefore", "RefuseWithdrawal", "WithdrawalAnswer", "answer_withdrawal"]

ENDED = ("completed", "rejected", "withdrawn")


@dataclass(frozen=True, slots=True)
class AskWithdrawal:
    """Publish `cancellation.withdrawal_requested` with this offer taken (None: without one)."""

    taken_offer: str | None


@dataclass(frozen=True, slots=True)
class AskedBefore:
    """The same withdrawal was asked before: one withdrawal, one take; the same answer again."""


@dataclass(frozen=True, slots=True)
class RefuseWithdrawal:
    why: str
    field: str = "request_id"  # what the refusal is about, for a submission's dead-letter reason


WithdrawalAnswer = AskWithdrawal | AskedBefore | RefuseWithdrawal


def answer_withdrawal(*, status: str, effective_date: date | None, today: date, offers: Sequence[str],
                      asked: bool, asked_with: str | None, taken_offer: str | None) -> WithdrawalAnswer:
    """`asked`: a withdrawal was asked for this request before, with the offer `asked_with` (or none).

    Without an offer (SPEC section 2): refused once the request is completed, rejected or withdrawn, or its
    effective date has come; asked twice is one withdrawal. It may be asked before the decision (eligibility
    handles the two in order). Taking an offer (SPEC section 6): the request must be accepted, its effective
    date not come and the offer among its offers; taking the same offer twice is one take, and a request
    already being withdrawn (without an offer, or with another) cannot take one.
    """
    if taken_offer is None:
        if status in ENDED:
            return RefuseWithdrawal(f"request is {status}", "request_id")
        if effective_date is not None and not can_withdraw(effective_date=effective_date, today=today):
            return RefuseWithdrawal("the effective date has come: the contract has ended", "request_id")
        return AskedBefore() if asked else AskWithdrawal(None)
    if asked or status == "withdrawn":
        if asked_with == taken_offer:
            return AskedBefore()
        before = f"with offer {asked_with}" if asked_with else "without an offer"
        return RefuseWithdrawal(f"the request is already being withdrawn {before}", "taken_offer")
    why = withdrawal_refusal(status=status, effective_date=effective_date, today=today, offers=offers,
                             taken_offer=taken_offer)
    if why is not None:
        in_time = effective_date is not None and can_withdraw(effective_date=effective_date, today=today)
        return RefuseWithdrawal(why, "taken_offer" if status == "accepted" and in_time else "request_id")
    return AskWithdrawal(taken_offer)
