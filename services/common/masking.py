"""Masking personal data that customers write into free text, in the forms people write:
mobiles with dashes or spaces, +86/0086 prefixes and full-width digits, landlines, e-mail
addresses with spaces around the @, ID-card and bank-card numbers, and the customer's own
name and address from the structured fields. Everything downstream of intake sees only
the masked text (`138****5678`)."""

from __future__ import annotations

import re

from pydantic import BaseModel

DIGIT = "[0-9０-９]"
SEP = r"[ \-－　.]?"
NOT_DIGIT_BEFORE = r"(?<![0-9０-９])"
NOT_DIGIT_AFTER = r"(?![0-9０-９])"

MOBILE = re.compile(
    NOT_DIGIT_BEFORE
    + r"((?:(?:\+|＋|00|００)?(?:86|８６)[ \-－　]?)?)"
    + f"([1１][3-9３-９]{DIGIT}){SEP}({DIGIT}{{4}}){SEP}({DIGIT}{{4}})"
    + NOT_DIGIT_AFTER
)
# Area code 0xx or 0xxx, then 7 or 8 digits: written with a dash, a space or brackets.
LANDLINE = re.compile(
    NOT_DIGIT_BEFORE
    + r"([(（]?[0０]"
    + f"{DIGIT}{{2,3}}"
    + r"[)）]?[ \-－　]?)"
    + f"({DIGIT}{{3,4}}){SEP}({DIGIT}{{4}})"
    + NOT_DIGIT_AFTER
)
# A match starts only where a run of address characters starts: linear, not quadratic,
# in a long run without an @.
EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*\s*[@＠]\s*([A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,})"
)
# 18-digit ID cards (last may be X) and 16–19 digit bank cards, also in groups of four.
ID_CARD = re.compile(
    NOT_DIGIT_BEFORE
    + f"({DIGIT}{{6}})({DIGIT}{{8}})({DIGIT}{{3}}[{DIGIT[1:-1]}XxＸｘ])"
    + NOT_DIGIT_AFTER
)
BANK_CARD = re.compile(
    NOT_DIGIT_BEFORE
    + f"({DIGIT}{{4}})((?:{SEP}{DIGIT}{{4}}){{2,3}}{SEP}{DIGIT}{{0,3}})"
    + NOT_DIGIT_AFTER
)


class Personal(BaseModel):
    """What of the customer's own details to look for in their text."""

    name: str | None = None
    address: str | None = None


def mask_contacts(text: str, own: Personal | None = None) -> str:
    """The text with contact details, ID and card numbers, and the customer's own name and
    address masked."""
    # Longest forms first, so that a shorter pattern never takes part of a longer number.
    text = ID_CARD.sub(lambda m: f"{m.group(1)}********{m.group(3)[-4:]}", text)
    text = MOBILE.sub(lambda m: f"{m.group(1)}{m.group(2)}****{m.group(4)}", text)
    text = BANK_CARD.sub(lambda m: f"{m.group(1)} **** {_last(m.group(2), 4)}", text)
    text = LANDLINE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)
    text = EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    if own is not None:
        if own.address and len(own.address.strip()) >= 4:
            text = text.replace(own.address.strip(), "[地址已隐藏]")
        name = (own.name or "").strip()
        if len(name) >= 2:
            text = text.replace(name, name[0] + "*" * (len(name) - 1))
    return text


def _last(digits: str, count: int) -> str:
    kept = re.sub(r"[^0-9０-９]", "", digits)
    return kept[-count:]
