"""The wire: the event envelope and one frozen model per event type (SPEC section 4).

Schemas evolve by adding optional fields: readers ignore fields they do not know, and every event
type states the highest `schema_version` this code understands. A message that is not JSON, has an
unknown `event_type`, a newer `schema_version` or fails validation raises `PoisonMessage`, whose text
names the field; the consumer dead-letters it with that reason.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import (AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, StringConstraints,
                      ValidationError, ValidationInfo, field_validator)

from shared import topics
from shared.vocabulary import NotificationKind, Offer, Plan, Reason, RejectionCode

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                      pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
# LINE official account ids look like "@123abcde".
AccountId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                             pattern=r"^@?[A-Za-z0-9][A-Za-z0-9._\-]*$")]
Yen = Annotated[int, Field(ge=0, le=1_000_000_000)]


class PoisonMessage(ValueError):
    """A message that can never be processed as it is: its reason names the offending field."""


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{prefix}{loc}: {err['msg']}" if loc else f"{prefix}{err['msg']}")
    return "; ".join(parts)


class WireModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _text_has_no_nul(cls, value: Any) -> Any:
        # PostgreSQL text and jsonb cannot hold U+0000: refuse it here, with the field's name.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain the NUL character")
        return value


# --- the cancellation form -------------------------------------------------------------------------

class Customer(WireModel):
    """Who asked; personal data: never logged in clear."""

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    email: EmailStr = Field(max_length=254)
    phone: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9][0-9\- ()]{6,22}$")]


class SealedCustomer(WireModel):
    """The `Customer` as AES-256-GCM ciphertext under its contract's data key (`shared.sealing`): readable
    while the key exists, never after the contract's personal data was erased."""

    key_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    nonce: Annotated[str, StringConstraints(min_length=1, max_length=64)]  # base64
    ciphertext: Annotated[str, StringConstraints(min_length=1, max_length=8000)]  # base64


class CancellationForm(WireModel):
    """The cancellation form (SPEC section 2)."""

    contract_id: Id
    account_id: AccountId = Field(description="The LINE official account to cancel, e.g. @123abcde.")
    customer: Customer
    plan: Plan
    reason: Reason
    feedback: Annotated[str, StringConstraints(max_length=4000)] = Field(
        "", description="What to improve, what feature was missing.")
    desired_effective_date: date | None = Field(
        None, description="Optional; the earliest effective date is used when absent.")


class StrictCancellationForm(CancellationForm):
    """The form as the HTTP API takes it: an unknown field is a typo to report, not to ignore."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- event data models ------------------------------------------------------------------------------

class EventData(WireModel):
    event_type: ClassVar[str]
    topic: ClassVar[str]
    schema_version: ClassVar[int] = 1


class ContractSigned(EventData):
    event_type = "contract.signed"
    topic = topics.CONTRACTS
    contract_id: Id
    account_id: AccountId
    plan: Plan
    monthly_fee_jpy: Yen
    start_date: date
    customer: Customer | None = None


class PaymentRecorded(EventData):
    event_type = "payment.recorded"
    topic = topics.CONTRACTS
    contract_id: Id
    billing_date: date
    amount_jpy: Yen


class CancellationSubmitted(CancellationForm, EventData):
    event_type = "cancellation.submitted"
    topic = topics.SUBMISSIONS
    submission_id: Id


class CancellationRequested(CancellationForm, EventData):
    """Version 2 added `customer_sealed`: the customer sealed under its contract's data key, with `customer`
    left empty, since a copy in clear in the retained topic could never be erased (docs/security.md). A
    version-1 event carries `customer` in clear and still validates; one of the two is required."""

    event_type = "cancellation.requested"
    topic = topics.REQUESTS
    schema_version = 2
    customer: Customer | None = Field(None, description="Version 1 only: the customer in clear.")
    customer_sealed: SealedCustomer | None = Field(
        None, validate_default=True, description="Added in version 2: the customer, sealed (AES-256-GCM).")

    @field_validator("customer_sealed")
    @classmethod
    def _a_customer_either_way(cls, sealed: SealedCustomer | None, info: ValidationInfo) -> SealedCustomer | None:
        # A customer that failed its own validation is missing from info.data: that error says enough.
        if sealed is None and "customer" in info.data and info.data["customer"] is None:
            raise ValueError("required when customer is absent (a version-2 event seals the customer)")
        return sealed
    request_id: Id
    source: Literal["http", "kafka"]
    submission_id: str | None = None
    received_at: AwareDatetime
    received_on: date


class WithdrawalSubmitted(EventData):
    """An upstream system (the call centre) withdraws a request, with the offer the customer took if any
    (SPEC section 6). Validated like a form; the same submission_id never acts twice."""

    event_type = "cancellation.withdrawal_submitted"
    topic = topics.SUBMISSIONS
    submission_id: Id
    request_id: Id
    taken_offer: Offer | None = None


class WithdrawalRequested(EventData):
    event_type = "cancellation.withdrawal_requested"
    topic = topics.REQUESTS
    request_id: Id
    contract_id: Id | None = None
    requested_at: AwareDatetime | None = None
    taken_offer: Offer | None = Field(None, description="Added field: the offer taken (withdrawn for it).")


class CancellationAccepted(EventData):
    event_type = "cancellation.accepted"
    topic = topics.DECISIONS
    request_id: Id
    contract_id: Id
    effective_date: date
    first_anniversary: date
    offers: tuple[Offer, ...] = ()
    received_on: date | None = Field(None, description="Added field: billing charges from this date.")
    reason: Reason | None = None
    decided_at: AwareDatetime | None = None
    holdout: bool = Field(False, description="Added field: in the holdout group, shown no offers.")


class CancellationRejected(EventData):
    event_type = "cancellation.rejected"
    topic = topics.DECISIONS
    request_id: Id
    contract_id: Id
    codes: tuple[RejectionCode, ...]
    earliest_effective_date: date | None = None
    reason: Reason | None = None
    decided_at: AwareDatetime | None = None
    received_on: date | None = Field(None, description="Added field: the request's received-on date.")


class CancellationWithdrawn(EventData):
    event_type = "cancellation.withdrawn"
    topic = topics.DECISIONS
    request_id: Id
    contract_id: Id | None = None
    withdrawn_at: AwareDatetime | None = None
    taken_offer: Offer | None = Field(None, description="Added field: the offer taken; null when withdrawn "
                                                        "without one.")


class WithdrawalRefused(EventData):
    """Added event: a withdrawal that came too late (on or after the effective date) or for a request
    that is not pending. The SPEC has no event for it; without one the requester would never hear."""

    event_type = "cancellation.withdrawal_refused"
    topic = topics.DECISIONS
    request_id: Id
    contract_id: Id | None = None
    why: str


class CancellationCompleted(EventData):
    event_type = "cancellation.completed"
    topic = topics.DECISIONS
    request_id: Id
    contract_id: Id | None = None
    effective_date: date
    completed_at: AwareDatetime | None = Field(None, description="Added field: when eligibility completed it.")


class OfferTaken(EventData):
    """A customer took a retention offer and withdrew: for the contract system to apply (a discount, a
    downgrade, a support session). Exactly once per take (SPEC section 6)."""

    event_type = "retention.offer_taken"
    topic = topics.RETENTION
    request_id: Id
    contract_id: Id
    account_id: AccountId
    offer: Offer
    reason: Reason
    plan: Plan
    taken_at: AwareDatetime


class ChargeLine(WireModel):
    billing_date: date
    amount_jpy: Yen


class SettlementIssued(EventData):
    event_type = "settlement.issued"
    topic = topics.SETTLEMENTS
    request_id: Id
    contract_id: Id
    charges: tuple[ChargeLine, ...]
    total_jpy: Yen
    refund_jpy: Literal[0] = 0
    paid_through: date
    issued_at: AwareDatetime | None = Field(None, description="Added field: when billing issued it.")


class SettlementVoided(EventData):
    event_type = "settlement.voided"
    topic = topics.SETTLEMENTS
    request_id: Id
    contract_id: Id | None = None


class NotificationSent(EventData):
    event_type = "notification.sent"
    topic = topics.NOTIFICATIONS
    request_id: Id
    kind: NotificationKind
    channel: Literal["email"] = "email"
    recipient: str = Field(description="Masked: never the address in clear.")
    sent_at: AwareDatetime
    due_at: AwareDatetime | None = None

    @field_validator("recipient")
    @classmethod
    def _must_be_masked(cls, value: str) -> str:
        if "***" not in value:
            raise ValueError("recipient must be masked")
        return value


class CustomerErasureRequested(EventData):
    """The customer of a contract asked to have their personal data erased (APPI, GDPR): every service
    anonymizes its rows for the contract and intake deletes its data key."""

    event_type = "customer.erasure_requested"
    topic = topics.CONTRACTS
    contract_id: Id
    requested_at: AwareDatetime | None = None


EVENT_TYPES: dict[str, type[EventData]] = {
    m.event_type: m for m in (
        ContractSigned, PaymentRecorded, CustomerErasureRequested, CancellationSubmitted, WithdrawalSubmitted,
        CancellationRequested, WithdrawalRequested, CancellationAccepted, CancellationRejected, CancellationWithdrawn,
        WithdrawalRefused, CancellationCompleted, OfferTaken, SettlementIssued, SettlementVoided, NotificationSent)
}


# --- the envelope -----------------------------------------------------------------------------------

class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID
    event_type: str
    schema_version: int = Field(ge=1)
    occurred_at: AwareDatetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    data: dict[str, Any]

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    def parse_data(self) -> EventData:
        """The typed payload; PoisonMessage if the type or version is unknown or a field is bad."""
        model = EVENT_TYPES.get(self.event_type)
        if model is None:
            raise PoisonMessage(f"event_type: unknown event type {self.event_type!r}")
        if self.schema_version > model.schema_version:
            raise PoisonMessage(f"schema_version: {self.event_type} version {self.schema_version} is newer "
                                f"than the supported {model.schema_version}")
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise PoisonMessage(describe_validation_error(exc, "data.")) from None


def decode(raw: bytes | None) -> tuple[Envelope, EventData]:
    """Bytes from Kafka -> envelope and typed payload, or PoisonMessage naming what is wrong."""
    if raw is None:
        raise PoisonMessage("value: empty message (tombstone)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"value: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PoisonMessage("value: the envelope must be a JSON object")
    try:
        envelope = Envelope.model_validate(obj)
    except ValidationError as exc:
        raise PoisonMessage(describe_validation_error(exc)) from None
    return envelope, envelope.parse_data()


def new_envelope(data: EventData, *, producer: str, correlation_id: str, causation_id: str | None,
                 occurred_at: datetime | None = None) -> Envelope:
    return Envelope(
        event_id=uuid.uuid4(), event_type=data.event_type, schema_version=data.schema_version,
        occurred_at=occurred_at or datetime.now(timezone.utc), producer=producer,
        correlation_id=correlation_id, causation_id=causation_id, data=data.model_dump(mode="json"),
    )
