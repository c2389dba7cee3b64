"""The topics of SPEC section 4, in one place for producers, consumers and the stack."""

CONTRACTS = "contracts.events"
SUBMISSIONS = "cancellation.submissions"
REQUESTS = "cancellation.requests"
DECISIONS = "cancellation.decisions"
SETTLEMENTS = "billing.settlements"
NOTIFICATIONS = "notifications.sent"
# Offers taken, for the contract system to apply (SPEC section 6).
RETENTION = "retention.offers"

ALL = (CONTRACTS, SUBMISSIONS, REQUESTS, DECISIONS, SETTLEMENTS, NOTIFICATIONS, RETENTION)
DLQ_SUFFIX = ".dlq"


def dlq(topic: str) -> str:
    """The dead-letter companion of a topic."""
    return topic + DLQ_SUFFIX


def all_with_dlq() -> tuple[str, ...]:
    return ALL + tuple(dlq(t) for t in ALL)
