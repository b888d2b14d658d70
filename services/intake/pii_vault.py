"""The PII vault: customers' names and contact details, encrypted at rest (AES-256-GCM).

Everything outside this table knows a customer only by a pseudonymous reference
(`客户-2024-0173`). The same phone or email maps to the same reference through a keyed
hash (HMAC), so repeat complaints can be found without storing contacts in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, EmailStr

from services.intake.numbering import FeedbackNumbering

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS pii_customers (
        customer_ref text PRIMARY KEY,
        sealed bytea,
        created_at timestamptz NOT NULL DEFAULT now(),
        erased_at timestamptz
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS pii_customer_lookup (
        lookup_hash bytea PRIMARY KEY,
        customer_ref text NOT NULL REFERENCES pii_customers (customer_ref)
    )
    """,
]


class Contact(BaseModel):
    """Personal data of a customer: only ever stored sealed in the vault."""

    name: str | None = None
    phone: str | None = None
    email: EmailStr | None = None
    address: str | None = None
    # A platform account (e.g. `wechat:<openid>`, `weibo:<uid>`): identifies the person too.
    account: str | None = None


def normalise_phone(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    return digits[-11:] if digits.startswith("86") and len(digits) == 13 else digits


PHONE_IN_TEXT = re.compile(r"(?<!\d)(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
EMAIL_IN_TEXT = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*(@[A-Za-z0-9.-]+\.[A-Za-z]{2,})")


ID_OR_CARD_IN_TEXT = re.compile(r"(?<!\d)(\d{4})\d{8,11}(\d{3}[\dXx])(?!\d)")


def mask_contacts(text: str) -> str:
    """Mask mobile numbers, emails, ID and bank card numbers customers write into free
    text (138****5678)."""
    text = ID_OR_CARD_IN_TEXT.sub(lambda m: f"{m.group(1)}********{m.group(2)}", text)
    text = PHONE_IN_TEXT.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)
    return EMAIL_IN_TEXT.sub(lambda m: f"{m.group(1)}***{m.group(2)}", text)


class PiiVault:
    def __init__(self, pool: AsyncConnectionPool, key: bytes, numbering: FeedbackNumbering) -> None:
        self.pool = pool
        self.cipher = AESGCM(key)
        # A separate key for lookups, derived so that hashes reveal nothing about the cipher key.
        self.lookup_key = hmac.new(key, b"feedback-pii-lookup", hashlib.sha256).digest()
        self.numbering = numbering

    def _lookup_hashes(self, contact: Contact) -> list[bytes]:
        keys = []
        if contact.phone:
            keys.append(f"phone:{normalise_phone(contact.phone)}")
        if contact.email:
            keys.append(f"email:{contact.email.lower()}")
        if contact.account:
            keys.append(f"account:{contact.account}")
        return [hmac.new(self.lookup_key, k.encode(), hashlib.sha256).digest() for k in keys]

    def seal(self, customer_ref: str, contact: Contact) -> bytes:
        nonce = os.urandom(12)
        plaintext = contact.model_dump_json(exclude_none=True).encode()
        return nonce + self.cipher.encrypt(nonce, plaintext, customer_ref.encode())

    def open(self, customer_ref: str, sealed: bytes) -> Contact:
        plaintext = self.cipher.decrypt(sealed[:12], sealed[12:], customer_ref.encode())
        return Contact.model_validate(json.loads(plaintext))

    async def pseudonym_for(self, contact: Contact, now: datetime) -> str:
        """The customer's reference: existing for a known phone/email, else a new one."""
        for _ in range(3):
            try:
                return await self._pseudonym_for(contact, now)
            except _Raced:
                continue  # a concurrent request registered the same contact: look again
        return await self._pseudonym_for(contact, now)

    async def _pseudonym_for(self, contact: Contact, now: datetime) -> str:
        hashes = self._lookup_hashes(contact)
        async with self.pool.connection() as conn:
            if hashes:
                cursor = await conn.execute(
                    "SELECT customer_ref FROM pii_customer_lookup WHERE lookup_hash = ANY(%s) LIMIT 1",
                    (hashes,),
                )
                row: Any = await cursor.fetchone()
                if row:
                    return str(row[0])
        customer_ref = await self.numbering.customer_reference(now.year)
        sealed = self.seal(customer_ref, contact)
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO pii_customers (customer_ref, sealed) VALUES (%s, %s)",
                (customer_ref, sealed),
            )
            for lookup_hash in hashes:
                cursor = await conn.execute(
                    "INSERT INTO pii_customer_lookup (lookup_hash, customer_ref) VALUES (%s, %s) "
                    "ON CONFLICT (lookup_hash) DO NOTHING RETURNING customer_ref",
                    (lookup_hash, customer_ref),
                )
                if await cursor.fetchone() is None:
                    # A concurrent request registered the same contact first: use theirs.
                    raise _Raced()
        return customer_ref

    async def erase(self, customer_ref: str) -> bool:
        """Crypto-shredding: the sealed contact and every lookup hash are destroyed; the
        history keeps the pseudonym, which no longer leads to a person."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM pii_customer_lookup WHERE customer_ref = %s", (customer_ref,)
            )
            cursor = await conn.execute(
                "UPDATE pii_customers SET sealed = NULL, erased_at = now() "
                "WHERE customer_ref = %s AND erased_at IS NULL RETURNING customer_ref",
                (customer_ref,),
            )
            return await cursor.fetchone() is not None

    async def reveal(self, customer_ref: str) -> Contact | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT sealed FROM pii_customers WHERE customer_ref = %s AND erased_at IS NULL",
                (customer_ref,),
            )
            row: Any = await cursor.fetchone()
        if row is None or row[0] is None:
            return None
        return self.open(customer_ref, bytes(row[0]))


class _Raced(Exception):
    pass
