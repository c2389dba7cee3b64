"""Eligibility's rules: may a cancellation take effect on the requested date, and what to offer.

They are the contract's rules, written once in shared.contract_rules (intake quotes with the same
functions); this module names the ones eligibility decides with.
"""

from shared.contract_rules import (DEFAULT_OFFER_POLICY, MINIMUM_TERM_MONTHS, NOTICE_PERIOD, Accepted, ContractTerms,
                                   Decision, OfferPolicy, Rejected, can_withdraw, decide, earliest_effective_date,
                                   is_due_for_completion, offer_policy_from_json, offers_for,
                                   parse_offer_policy)
from shared.vocabulary import Offer, Reason, RejectionCode

__all__ = [
    "DEFAULT_OFFER_POLICY",
    "MINIMUM_TERM_MONTHS",
    "NOTICE_PERIOD",
    "Accepted",
    "ContractTerms",
    "Decision",
    "Offer",
    "OfferPolicy",
    "Reason",
    "Rejected",
    "RejectionCode",
    "can_withdraw",
    "decide",
    "earliest_effective_date",
    "is_due_for_completion",
    "offer_policy_from_json",
    "offers_for",
    "parse_offer_policy",
]
