"""The customer of a notification, opened at send time: the recipients table keeps it sealed as it came
(`shared.sealing`), and the claim of the due mails reads each contract's data key with it, from intake's
`data_keys` view (the one thing of intake's that notifier may read). A contract whose key is gone was
erased: its notification is never sent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.events import SealedCustomer
from shared.sealing import DataKey, Unreadable, unseal


@dataclass(frozen=True)
class Recipient:
    name: str
    email: str


def open_recipients(rows: Sequence[Any]) -> dict[int, Recipient]:
    """{notification id: its recipient in clear} for the claimed rows that can still be read; an erased one
    is left out."""
    out: dict[int, Recipient] = {}
    for row in rows:
        if row["customer_sealed"]:
            key = DataKey(row["contract_id"], row["data_key_id"], bytes(row["data_key"])) if row["data_key"] else None
            try:
                customer = unseal(SealedCustomer.model_validate(row["customer_sealed"]), row["contract_id"], key)
            except Unreadable:
                continue
            out[row["id"]] = Recipient(customer.name, str(customer.email))
        elif row["email"]:  # a version-1 event's recipient, in clear
            out[row["id"]] = Recipient(row["customer_name"], row["email"])
    return out
