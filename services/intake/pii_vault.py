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
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, EmailStr, ValidationError

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
    # A customer is provisional until a registration naming them is accepted; what a
    # refused or failed submission left is swept (see `sweep_provisional`).
    "ALTER TABLE pii_customers ADD COLUMN IF NOT EXISTS provisional boolean NOT NULL DEFAULT false",
    "CREATE INDEX IF NOT EXISTS pii_customers_provisional ON pii_customers (created_at) "
    "WHERE provisional",
    "CREATE INDEX IF NOT EXISTS pii_customer_lookup_customer ON pii_customer_lookup (customer_ref)",
]
# A provisional customer older than this, that no accepted feedback names, is removed.
PROVISIONAL_GRACE_S = 3600


class Contact(BaseModel):
    """Personal data of a customer: only ever stored sealed in the vault."""

    name: str | None = None
    phone: str | None = None
    email: EmailStr | None = None
    address: str | None = None
    # A platform account (e.g. `wechat:<openid>`, `weibo:<uid>`): identifies the person too.
    account: str | None = None


def normalise_phone(phone: str) -> str:
    # Every decimal digit as its ASCII form: a number typed with full-width digits
    # (１３８…) is the same customer as 138… (re's \d keeps them as they are).
    digits = "".join(str(unicodedata.decimal(c)) for c in phone if c.isdecimal())
    return digits[-11:] if digits.startswith("86") and len(digits) == 13 else digits


class PiiVault:
    def __init__(
        self, pool: AsyncConnectionPool, key: bytes, numbering: FeedbackNumbering | None = None
    ) -> None:
        """Without `numbering` the vault only reveals and erases (no new customers)."""
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

    def caller_of(self, contact: Contact) -> str:
        """A keyed digest naming whoever sent a submission (its first contact), so that one
        caller's idempotency key can never answer for another's feedback."""
        hashes = self._lookup_hashes(contact)
        return hashes[0].hex()[:32] if hashes else "anonymous"

    def seal(self, customer_ref: str, contact: Contact) -> bytes:
        nonce = os.urandom(12)
        plaintext = contact.model_dump_json(exclude_none=True).encode()
        return nonce + self.cipher.encrypt(nonce, plaintext, customer_ref.encode())

    def open(self, customer_ref: str, sealed: bytes) -> Contact:
        plaintext = self.cipher.decrypt(sealed[:12], sealed[12:], customer_ref.encode())
        return Contact.model_validate(json.loads(plaintext))

    async def pseudonyms_for(self, contacts: Sequence[Contact], now: datetime) -> list[str]:
        """References for a batch of contacts, in their order, in a few round trips.

        A contact whose phone, email or account is known keeps its reference; contacts new
        to the vault that share one of those within the batch become one customer.
        """
        for _ in range(3):
            try:
                return await self._pseudonyms_for(contacts, now)
            except _Raced:
                continue  # a lookup vanished under us (an erasure): look again
        return await self._pseudonyms_for(contacts, now)

    async def _pseudonyms_for(self, contacts: Sequence[Contact], now: datetime) -> list[str]:
        hashes = [self._lookup_hashes(contact) for contact in contacts]
        async with self.pool.connection() as conn:
            known = await _owners(conn, {h for contact in hashes for h in contact}, touch=True)
        references: list[str | None] = [None] * len(contacts)
        # Customers new to the vault: one group per person, found by shared lookup hashes.
        groups: list[list[int]] = []
        group_of_hash: dict[bytes, int] = {}
        for index, contact_hashes in enumerate(hashes):
            found = next((known[h] for h in contact_hashes if h in known), None)
            if found is not None:
                references[index] = found
                continue
            group = next((group_of_hash[h] for h in contact_hashes if h in group_of_hash), None)
            if group is None:
                group = len(groups)
                groups.append([])
            groups[group].append(index)
            for lookup_hash in contact_hashes:
                group_of_hash.setdefault(lookup_hash, group)
        if groups:
            new = await self._create(contacts, groups, group_of_hash, now)
            for group, members in enumerate(groups):
                for index in members:
                    references[index] = new[group]
        return [reference for reference in references if reference is not None]

    async def _create(
        self,
        contacts: Sequence[Contact],
        groups: list[list[int]],
        group_of_hash: dict[bytes, int],
        now: datetime,
    ) -> list[str]:
        """Seal one new customer per group; where a concurrent registration claimed the same
        phone or email first, that customer is the one (ours is folded into it)."""
        assert self.numbering is not None, "a vault that registers customers numbers them"
        new = await self.numbering.customer_references(now.year, len(groups))
        sealed = [self.seal(new[g], contacts[members[0]]) for g, members in enumerate(groups)]
        # Sorted, so that concurrent batches take the hash locks in one order (no deadlock).
        lookups = sorted(group_of_hash.items())
        async with self.pool.connection() as conn:
            # One statement, so one round trip and atomic: the customers, then their lookups.
            cursor = await conn.execute(
                "WITH customers AS (INSERT INTO pii_customers (customer_ref, sealed, provisional) "
                "SELECT *, true FROM unnest(%s::text[], %s::bytea[])) "
                "INSERT INTO pii_customer_lookup (lookup_hash, customer_ref) "
                "SELECT * FROM unnest(%s::bytea[], %s::text[]) "
                "ON CONFLICT (lookup_hash) DO NOTHING RETURNING lookup_hash",
                (new, sealed, [h for h, _ in lookups], [new[g] for _, g in lookups]),
            )
            won = {bytes(row[0]) for row in await cursor.fetchall()}
        lost = [(h, g) for h, g in lookups if h not in won]
        if lost:
            await self._fold(new, lost)
        return new

    async def _fold(self, new: list[str], lost: list[tuple[bytes, int]]) -> None:
        """A concurrent registration claimed some of these phones or emails first: each
        customer we just created for them is folded into that earlier customer."""
        async with self.pool.connection() as conn, conn.transaction():
            owners = await _owners(conn, {h for h, _ in lost})
            folded_groups: set[int] = set()
            for lookup_hash, group in lost:
                if lookup_hash not in owners:
                    raise _Raced()
                if group in folded_groups:
                    continue
                folded_groups.add(group)
                folded, new[group] = new[group], owners[lookup_hash]
                await conn.execute(
                    "UPDATE pii_customer_lookup SET customer_ref = %s WHERE customer_ref = %s",
                    (new[group], folded),
                )
                await conn.execute("DELETE FROM pii_customers WHERE customer_ref = %s", (folded,))

    async def sweep_provisional(self, grace_s: float = PROVISIONAL_GRACE_S) -> int:
        """Remove the contact details of customers that only refused or failed submissions
        named (a 422 or 503 must not leave personal data behind). The grace is far longer
        than a registration takes, so an accepted one has confirmed its customer first."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "WITH stale AS (SELECT customer_ref FROM pii_customers c WHERE provisional "
                "AND created_at < now() - make_interval(secs => %s) AND NOT EXISTS "
                "(SELECT 1 FROM intake_registry r WHERE r.customer_ref = c.customer_ref) "
                "FOR UPDATE SKIP LOCKED), "
                "lookups AS (DELETE FROM pii_customer_lookup "
                "WHERE customer_ref IN (SELECT customer_ref FROM stale)) "
                "DELETE FROM pii_customers WHERE customer_ref IN (SELECT customer_ref FROM stale) "
                "RETURNING customer_ref",
                (grace_s,),
            )
            return len(await cursor.fetchall())

    async def customer_of_email(self, address: str) -> str | None:
        """The customer this e-mail address belongs to, found by its lookup hash (so the
        address is normalised as when it was registered); None if unknown or erased."""
        try:
            contact = Contact(email=address)
        except ValidationError:
            return None  # not an address anyone was registered with
        async with self.pool.connection() as conn:
            owners = await _owners(conn, set(self._lookup_hashes(contact)))
        return next(iter(owners.values()), None)

    async def customer_of_phone(self, phone: str) -> str | None:
        """The customer this phone number belongs to, found by its lookup hash (dashes,
        spaces, +86 and full-width digits normalised as at registration); None if unknown
        or erased."""
        if not normalise_phone(phone):
            return None
        async with self.pool.connection() as conn:
            owners = await _owners(conn, set(self._lookup_hashes(Contact(phone=phone))))
        return next(iter(owners.values()), None)

    async def erase(
        self,
        customer_ref: str,
        audit: Callable[[AsyncConnection[Any]], Awaitable[None]] | None = None,
    ) -> bool:
        """Crypto-shredding: the sealed contact and every lookup hash are destroyed; the
        history keeps the pseudonym, which no longer leads to a person. `audit` records
        the erasure in the same transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM pii_customer_lookup WHERE customer_ref = %s", (customer_ref,)
            )
            cursor = await conn.execute(
                "UPDATE pii_customers SET sealed = NULL, erased_at = now() "
                "WHERE customer_ref = %s AND erased_at IS NULL RETURNING customer_ref",
                (customer_ref,),
            )
            erased = await cursor.fetchone() is not None
            # Originals kept of this customer's feedback go with the contact.
            await conn.execute(
                "UPDATE deadletters SET payload = '', sealed = false, metadata = '{}', "
                "replay_result = replay_result || ' (original erased with the customer)' "
                "WHERE feedback_number IN "
                "(SELECT feedback_number FROM intake_registry WHERE customer_ref = %s)",
                (customer_ref,),
            )
            if erased and audit is not None:
                await audit(conn)
            return erased

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


async def _owners(conn: Any, hashes: set[bytes], touch: bool = False) -> dict[bytes, str]:
    """Which customer each of these lookup hashes leads to, where known. With `touch`, a
    provisional customer found is renewed, so the sweep cannot remove them while a new
    registration naming them is under way."""
    if not hashes:
        return {}
    cursor = await conn.execute(
        "WITH owners AS (SELECT lookup_hash, customer_ref FROM pii_customer_lookup "
        "WHERE lookup_hash = ANY(%s)), touched AS (UPDATE pii_customers SET created_at = now() "
        "WHERE %s AND provisional AND customer_ref IN (SELECT customer_ref FROM owners)) "
        "SELECT lookup_hash, customer_ref FROM owners",
        (list(hashes), touch),
    )
    return {bytes(row[0]): str(row[1]) for row in await cursor.fetchall()}
