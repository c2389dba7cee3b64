"""The product's closed vocabularies (SPEC sections 1-4), shared by the wire schemas and the domains."""

from enum import StrEnum


class Plan(StrEnum):
    lite = "lite"
    standard = "standard"
    pro = "pro"
    enterprise = "enterprise"


class Reason(StrEnum):
    """The seven reasons of the cancellation form."""

    INITIAL_SETUP_FAILED = "INITIAL_SETUP_FAILED"
    TOO_DIFFICULT = "TOO_DIFFICULT"
    BUSINESS_CLOSED = "BUSINESS_CLOSED"
    LINE_ACCOUNT_UNAVAILABLE = "LINE_ACCOUNT_UNAVAILABLE"
    NOT_USEFUL_FOR_BUSINESS = "NOT_USEFUL_FOR_BUSINESS"
    SWITCHING_TOOL = "SWITCHING_TOOL"
    NO_LONGER_USED = "NO_LONGER_USED"


class Offer(StrEnum):
    """Retention offers attached to an accepted cancellation."""

    setup_support = "setup_support"
    guided_training = "guided_training"
    consultation = "consultation"
    downgrade = "downgrade"
    discount = "discount"


class RejectionCode(StrEnum):
    CONTRACT_NOT_FOUND = "CONTRACT_NOT_FOUND"
    CONTRACT_ENDED = "CONTRACT_ENDED"
    MINIMUM_TERM = "MINIMUM_TERM"
    NOTICE_PERIOD = "NOTICE_PERIOD"
    ALREADY_PENDING = "ALREADY_PENDING"


class NotificationKind(StrEnum):
    acknowledgement = "acknowledgement"
    rejection = "rejection"
    data_export_reminder = "data_export_reminder"
    rich_menu_reminder = "rich_menu_reminder"
    withdrawal_confirmation = "withdrawal_confirmation"
    offer_confirmation = "offer_confirmation"


class RequestStatus(StrEnum):
    """The status a customer sees (intake's status view)."""

    received = "received"
    accepted = "accepted"
    rejected = "rejected"
    withdrawn = "withdrawn"
    completed = "completed"


# The pipeline's four services, in the order a stack starts them (each is services/<name>/).
SERVICES = ("intake", "eligibility", "billing", "notifier")
