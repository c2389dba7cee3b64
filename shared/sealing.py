"""Personal data sealed per contract (crypto-shredding): the customer travels in the topics the pipeline
writes only as AES-256-GCM ciphertext under its contract's data key. The keys live in one place (intake's
`subject_keys`); erasing a contract deletes its key, so every copy of the ciphertext in every topic, DLQ,
table or backup is unreadable from then on. The rules only: no I/O here."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.events import Customer, SealedCustomer

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's


class Unreadable(ValueError):
    """The key is gone (erased), or is not the one the data was sealed with."""


@dataclass(frozen=True)
class DataKey:
    """A contract's data key: `key_id` names it in every sealed value, so a key made after an erasure
    cannot be mistaken for the erased one."""

    contract_id: str
    key_id: str
    key: bytes


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _aad(contract_id: str, key_id: str) -> bytes:
    # Bound to its contract: a ciphertext moved to another contract's record does not open.
    return f"{contract_id}\x1f{key_id}".encode()


def seal(customer: Customer, key: DataKey) -> SealedCustomer:
    nonce = os.urandom(NONCE_BYTES)
    plaintext = customer.model_dump_json().encode()
    ciphertext = AESGCM(key.key).encrypt(nonce, plaintext, _aad(key.contract_id, key.key_id))
    return SealedCustomer(key_id=key.key_id, nonce=_b64(nonce), ciphertext=_b64(ciphertext))


def unseal(sealed: SealedCustomer, contract_id: str, key: DataKey | None) -> Customer:
    """The customer, or Unreadable when `key` is None (erased) or another key than the one it was sealed with."""
    if key is None or key.key_id != sealed.key_id or key.contract_id != contract_id:
        raise Unreadable(f"the data key of contract {contract_id} is erased")
    try:
        plaintext = AESGCM(key.key).decrypt(base64.b64decode(sealed.nonce), base64.b64decode(sealed.ciphertext),
                                            _aad(contract_id, key.key_id))
    except (InvalidTag, ValueError):
        raise Unreadable(f"the customer of contract {contract_id} does not open with its key") from None
    # Authenticated, so it is what `seal` wrote from a validated Customer: not validated again (the e-mail
    # check is the costly part, once per mail sent).
    return Customer.model_construct(**orjson.loads(plaintext))
