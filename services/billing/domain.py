"""The final settlement of a cancelled contract.

A contract rule, written once in shared.contract_rules (intake quotes with the same function); this
module names what billing settles with.
"""

from shared.contract_rules import Charge, Settlement, settle

__all__ = ["Charge", "Settlement", "settle"]
