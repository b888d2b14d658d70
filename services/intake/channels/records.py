"""Records entered by staff: batch files from stores and letters (`store`, `letter`),
callback findings (`callback`), and customers' supplements to earlier feedback.

Batch files use the registration-table layout (客户反馈登记表), Chinese or English
headers. Each row is checked on its own: valid rows are registered (durably, so a Kafka
outage loses nothing), refused rows are reported with their row numbers and reasons.
Re-importing the same file registers nothing twice: a row's channel reference is the
file's hash and the row number unless the file gives its own reference.

A file is read within fixed bounds, off the event loop (see `tables`). A row is a source
that cannot be asked again, so text the boundary rule refuses (NUL and other control
characters) is removed, the cleaned row registered, and the row as sent kept as a dead
letter; times outside the accepted window refuse the row (staff can correct and re-import).
Rows are registered concurrently, so that the registrar's group commit writes them in
batches: 10,000 rows take seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Path, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from contracts.codes import Channel, Emotion, FeedbackType
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.access.http import require, staff_of
from services.access.roles import Actor
from services.access.tokens import customer_token_valid
from services.common.boundary import Checked, clean_text, excerpt, text_flaw
from services.intake.channels.common import (
    CustomerIn,
    FeedbackAccepted,
    Short,
    Text,
    Tier,
    answer,
    busy_refusal,
)
from services.intake.channels.tables import MAX_ROWS, Table, TableError, header_flaws, read_table
from services.intake.deadletters import DeadLetters
from services.intake.pii_vault import Contact
from services.intake.registration import (
    Accepted,
    DuplicateInProgress,
    IntakeBusy,
    IntakeUnavailable,
    InvalidSubmission,
    Registrar,
    Submission,
    UnknownFeedback,
)

log = logging.getLogger(__name__)

# Registrations awaited at once: twice what the registrar writes at once, so that its next
# batches wait queued while the current ones commit (10,000 rows here: 256 at once took
# ~10 s, 1,024 ~7 s, 2,048 ~3 s). More would queue other channels' feedback longer
# behind an import.
REGISTER_CHUNK = 2 * Registrar.MAX_BATCH * Registrar.BATCHES_IN_FLIGHT
# Files parsed at once per process: each may hold a few hundred MB while it is read.
PARSING_AT_ONCE = 2
DEAD_LETTERS_AT_ONCE = 8

HEADERS: dict[str, str] = {
    "接收时间": "received_at", "反馈时间": "received_at", "received_at": "received_at",
    "客户名称": "name", "联系人": "name", "客户名称/联系人": "name", "name": "name",
    "联系方式": "contact", "联系电话": "phone", "电话": "phone", "phone": "phone",
    "邮箱": "email", "email": "email", "地址": "address", "address": "address",
    "产品型号": "product_model", "产品型号/服务类型": "product_model", "product_model": "product_model",
    "服务类型": "service_type", "service_type": "service_type",
    "购买日期": "purchase_date", "purchase_date": "purchase_date",
    "问题描述": "description", "description": "description",
    "客户已尝试": "customer_attempts", "customer_attempts": "customer_attempts",
    "期望解决方案": "expectation", "expectation": "expectation",
    "客户情绪": "emotion", "emotion": "emotion",
    "客户级别": "customer_tier", "customer_tier": "customer_tier",
    "问题类型": "type", "type": "type",
    "单号": "channel_reference", "渠道单号": "channel_reference", "reference": "channel_reference",
    "接收人": "receiver", "受理人": "receiver", "receiver": "receiver",
}  # fmt: skip
EMOTIONS = {"平静": "calm", "不满": "dissatisfied", "焦虑": "anxious", "愤怒": "angry"}
TYPES = {"咨询": "inquiry", "咨询类": "inquiry", "投诉": "complaint", "投诉类": "complaint",
         "建议": "suggestion", "建议类": "suggestion", "表扬": "praise", "表扬类": "praise",
         "求助": "help", "求助类": "help"}  # fmt: skip
TIERS = {"VIP": "vip", "vip": "vip", "普通": "normal", "normal": "normal"}
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


class BatchRow(Checked):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    description: Annotated[str, Field(min_length=1, max_length=5000)]
    customer: CustomerIn
    received_at: datetime
    receiver: Short
    customer_tier: Tier = "normal"
    product_model: Short | None = None
    service_type: Short | None = None
    purchase_date: date | None = None
    customer_attempts: Text | None = None
    expectation: Text | None = None
    emotion: Emotion | None = None
    type: FeedbackType | None = None
    channel_reference: Short | None = None


class RowRefused(BaseModel):
    row: int
    errors: list[str]


class RowCleaned(BaseModel):
    """A row registered without the characters it should not have held (its original is
    kept as a dead letter); row 1 is the header, registered as nothing."""

    row: int
    feedback_number: str | None
    removed: list[str]


class ImportSummary(BaseModel):
    file_sha256: str
    rows: int
    taken: list[dict[str, Any]]
    refused: list[RowRefused]
    cleaned: list[RowCleaned] = []


def row_to_batch(raw: dict[str, Any], zone: tzinfo = UTC) -> BatchRow:
    """A row (header -> value) as a BatchRow; a time without a zone is in `zone`."""
    fields: dict[str, Any] = {}
    customer: dict[str, Any] = {}
    unknown = [h for h in raw if h and h not in HEADERS]
    if unknown:
        raise ValueError(f"unknown columns {[excerpt(h, 40) for h in unknown[:10]]}")
    for header, value in raw.items():
        if value in (None, "") or not header:
            continue
        name = HEADERS[header]
        text = value if isinstance(value, datetime | date) else str(value).strip()
        if name in ("name", "phone", "email", "address"):
            customer[name] = text
        elif name == "contact":
            customer["email" if "@" in str(text) else "phone"] = text
        elif name == "emotion":
            fields[name] = EMOTIONS.get(str(text), text)
        elif name == "type":
            fields[name] = TYPES.get(str(text), text)
        elif name == "customer_tier":
            fields[name] = TIERS.get(str(text), text)
        elif name == "received_at" and isinstance(text, str):
            fields[name] = text.replace("/", "-")
        else:
            fields[name] = text
    if "received_at" in fields:
        # The zone before the boundary check: a local time read as UTC would look hours
        # ahead (in the future) or behind.
        try:
            received = _DATETIME.validate_python(fields["received_at"])
        except ValidationError:
            pass  # BatchRow reports it
        else:
            fields["received_at"] = received if received.tzinfo else received.replace(tzinfo=zone)
    return BatchRow.model_validate({**fields, "customer": customer})


@dataclass
class _Row:
    """One row of an import on its way: a submission to register, or why not."""

    number: int
    submission: Submission | None = None
    errors: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    as_sent: list[Any] = field(default_factory=list)


@dataclass
class _Plan:
    file_sha256: str
    table: Table
    rows: list[_Row]


def plan_import(data: bytes, filename: str, channel: Channel, zone: tzinfo) -> _Plan:
    """Read and check every row (CPU-bound: runs in a worker thread)."""
    file_hash = hashlib.sha256(data).hexdigest()
    table = read_table(data, filename)
    planned: list[_Row] = []
    for number, cells in enumerate(table.rows, start=2):  # row 1 is the header
        planned.append(_plan_row(number, table, cells, channel, file_hash, zone))
    return _Plan(file_hash, table, planned)


def _plan_row(
    number: int, table: Table, cells: list[Any], channel: Channel, file_hash: str, zone: tzinfo
) -> _Row:
    planned = _Row(number, as_sent=cells)
    raw: dict[str, Any] = {}
    for header, value in zip(table.header, cells, strict=False):
        if not header:
            continue  # a column without a header is not read
        flaw = text_flaw(value) if isinstance(value, str) else None
        if flaw:
            planned.removed.append(f"{excerpt(header, 40)}: {flaw}")
            value = clean_text(value)
        raw[header] = value
    try:
        row = row_to_batch(raw, zone)
    except (ValueError, ValidationError) as error:
        planned.errors = _reasons(error)
        return planned
    planned.submission = Submission(
        channel=channel,
        description=row.description,
        contact=row.customer.contact(),
        receiver=row.receiver,
        received_at=row.received_at,
        channel_reference=row.channel_reference or f"{file_hash[:16]}:{number}",
        customer_tier=row.customer_tier,
        product_model=row.product_model,
        service_type=row.service_type,
        purchase_date=row.purchase_date,
        customer_attempts=row.customer_attempts,
        expectation=row.expectation,
        emotion=row.emotion,
        stated_type=row.type,
    )
    return planned


async def register_rows(registrar: Registrar, rows: Sequence[_Row]) -> dict[int, Accepted | str]:
    """Each row's registration or why it failed, by row number (rows with a submission).

    Awaited REGISTER_CHUNK at a time, so that group commit writes them in full batches. A
    reference the file repeats is registered by its first row before the later ones ask:
    in concurrent batches they would race for it."""
    seen: set[str | None] = set()
    firsts: list[tuple[int, Submission]] = []
    repeats: list[tuple[int, Submission]] = []
    for row in rows:
        if row.submission is None:
            continue
        reference = row.submission.channel_reference
        (repeats if reference in seen else firsts).append((row.number, row.submission))
        seen.add(reference)
    results: dict[int, Accepted | str] = {}
    # Never more at once than half of what may wait: a file must fit beside other traffic.
    size = max(1, min(REGISTER_CHUNK, registrar.settings.intake_max_pending // 2))
    for group in (firsts, repeats):
        for start in range(0, len(group), size):
            chunk = group[start : start + size]
            outcomes = await asyncio.gather(
                *(registrar.register_durably(submission) for _, submission in chunk),
                return_exceptions=True,
            )
            busy = next((o for o in outcomes if isinstance(o, IntakeBusy)), None)
            if busy is not None:
                # The file is refused as a whole (503); importing the same file again
                # registers only the rows not registered yet.
                done = len(results) + sum(isinstance(o, Accepted) for o in outcomes)
                raise ImportInterrupted(done) from busy
            for (number, _), outcome in zip(chunk, outcomes, strict=True):
                results[number] = _outcome(outcome)
    return results


class ImportInterrupted(IntakeBusy):
    """Intake filled up part-way through a file: some rows are registered already."""

    def __init__(self, registered: int) -> None:
        super().__init__(
            f"intake is busy; {registered} row(s) of this file were registered: import the "
            "same file again (registered rows are not registered twice)"
        )
        self.registered = registered


def _outcome(outcome: Accepted | BaseException) -> Accepted | str:
    if isinstance(outcome, Accepted):
        return outcome
    if isinstance(outcome, InvalidSubmission):
        return "; ".join(
            excerpt(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}", 500)
            for e in outcome.errors
        )
    if isinstance(outcome, DuplicateInProgress):
        return "being registered by another import right now; import the file again"
    if isinstance(outcome, IntakeUnavailable):
        return (
            f"not registered now ({excerpt(str(outcome), 200)}); import the file again "
            "(rows already registered are not registered twice)"
        )
    raise outcome


class CallbackIn(Checked):
    """A problem found during a callback (回访) becomes new feedback, linked to the earlier one."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    callback_id: Annotated[str, Field(min_length=1, max_length=100)]
    earlier_feedback_number: Annotated[str, Field(pattern=FEEDBACK_NUMBER_PATTERN)]
    customer: CustomerIn
    description: Annotated[str, Field(min_length=1, max_length=5000)]
    customer_tier: Tier = "normal"
    product_model: Short | None = None
    expectation: Text | None = None
    emotion: Emotion | None = None


class SupplementIn(Checked):
    """Information the customer supplies to an earlier feedback, from any channel."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    channel: Channel
    text: Annotated[str, Field(max_length=5000)] = ""
    product_model: Short | None = None
    service_type: Short | None = None
    purchase_date: date | None = None
    received_at: AwareDatetime | None = None


def records_router(
    registrar: Registrar, zone: tzinfo, deadletters: DeadLetters | None = None
) -> APIRouter:
    router = APIRouter(tags=["intake"])
    kept = deadletters or DeadLetters(registrar.pool, registrar.settings)
    parsing = asyncio.Semaphore(PARSING_AT_ONCE)

    @router.post("/v1/channels/batch/{channel}", response_model=ImportSummary)
    async def import_batch(
        channel: Literal["store", "letter"],
        file: UploadFile,
        _: Annotated[Actor, require("intake.staff")],
    ) -> ImportSummary:
        limit = registrar.settings.max_batch_file_bytes
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, detail=f"batch files are at most {limit} bytes")
        filename = file.filename or "upload.csv"
        async with parsing:
            try:
                plan = await asyncio.to_thread(plan_import, data, filename, Channel(channel), zone)
            except TableError as error:
                raise HTTPException(
                    422, detail=f"cannot read {excerpt(filename, 100)}: {error}"
                ) from error
        del data
        summary = ImportSummary(
            file_sha256=plan.file_sha256, rows=len(plan.rows), taken=[], refused=[]
        )
        flawed_header = header_flaws(plan.table)
        if flawed_header:
            summary.cleaned.append(RowCleaned(row=1, feedback_number=None, removed=flawed_header))
        try:
            results = await register_rows(registrar, plan.rows)
        except IntakeBusy as error:
            raise busy_refusal(error) from error
        cleaned: list[tuple[_Row, Accepted]] = []
        for row in plan.rows:
            result = results.get(row.number)
            if not isinstance(result, Accepted):
                errors = row.errors if result is None else [result]
                summary.refused.append(RowRefused(row=row.number, errors=errors))
                continue
            summary.taken.append(
                {
                    "row": row.number,
                    "feedback_number": result.feedback_number,
                    "duplicate": result.duplicate,
                }
            )
            if row.removed:
                summary.cleaned.append(
                    RowCleaned(
                        row=row.number, feedback_number=result.feedback_number, removed=row.removed
                    )
                )
                # Kept by every import of the row: the record has one id per feedback, so a
                # re-import restores an original an interrupted import did not keep.
                cleaned.append((row, result))
        await _keep_originals(kept, channel, filename, plan, cleaned)
        return summary

    @router.post("/v1/channels/callback", status_code=202, response_model=FeedbackAccepted)
    async def callback_finding(
        body: CallbackIn, actor: Annotated[Actor, require("intake.staff")]
    ) -> FeedbackAccepted | JSONResponse:
        """Entered by the signed-in agent who made the callback."""
        if await registrar.find(body.earlier_feedback_number) is None:
            raise HTTPException(422, detail=f"no earlier feedback {body.earlier_feedback_number}")
        submission = Submission(
            channel=Channel.callback,
            description=body.description,
            contact=body.customer.contact(),
            receiver=actor.name,
            channel_reference=body.callback_id,
            customer_tier=body.customer_tier,
            product_model=body.product_model,
            expectation=body.expectation,
            emotion=body.emotion,
            related_feedback=body.earlier_feedback_number,
        )
        return await answer(registrar.register(submission))

    @router.post("/v1/feedback/{number}/supplements", status_code=202)
    async def supplement(
        request: Request,
        number: Annotated[str, Path(pattern=FEEDBACK_NUMBER_PATTERN)],
        body: SupplementIn,
        x_customer_token: Annotated[
            str | None,
            Header(max_length=100, description="the customer_token answered with the feedback"),
        ] = None,
    ) -> dict[str, str]:
        """The customer's own (their `X-Customer-Token`), or entered by staff for them."""
        key = registrar.settings.auth_token_key_bytes
        if not customer_token_valid(key, number, x_customer_token) and not await staff_of(
            request, "intake.staff"
        ):
            raise HTTPException(
                401, detail="send the customer token of this feedback (X-Customer-Token)"
            )
        supplied = {
            k: str(v)
            for k, v in body.model_dump(
                include={"product_model", "service_type", "purchase_date"}
            ).items()
            if v
        }
        if not supplied and not body.text.strip():
            raise HTTPException(422, detail="nothing supplied")
        try:
            await registrar.correspond(
                number,
                body.channel,
                body.text,
                supplied=supplied,
                received_at=body.received_at or datetime.now(UTC),
            )
        except UnknownFeedback as error:
            raise HTTPException(404, detail=f"no feedback {number}") from error
        except IntakeUnavailable as error:
            raise HTTPException(
                503, detail="not accepted now (message bus unavailable); retry"
            ) from error
        return {"status": "accepted", "feedback_number": number}

    return router


# The id of the original kept for a cleaned row: one per registered feedback.
ORIGINALS = uuid.UUID("1f0c7f51-6a55-4b43-9a54-3b9f4f6e9d21")


async def _keep_originals(
    deadletters: DeadLetters,
    channel: str,
    filename: str,
    plan: _Plan,
    cleaned: list[tuple[_Row, Accepted]],
) -> None:
    """Each cleaned row as sent, as a dead letter settled by its registration."""
    slots = asyncio.Semaphore(DEAD_LETTERS_AT_ONCE)

    async def keep(row: _Row, accepted: Accepted) -> None:
        # ensure_ascii: NUL and lone surrogates travel as JSON escapes, exactly as sent.
        original = json.dumps(
            {
                "file": filename,
                "file_sha256": plan.file_sha256,
                "row": row.number,
                "header": plan.table.header_as_sent,
                "cells": row.as_sent,
            },
            ensure_ascii=True,
            default=str,
        ).encode()
        async with slots:
            try:
                await deadletters.keep(
                    f"batch/{channel}",
                    "; ".join(row.removed),
                    original,
                    {
                        "file": filename[:200],
                        "file_sha256": plan.file_sha256,
                        "row": str(row.number),
                    },
                    settled=f"registered cleaned as {accepted.feedback_number}",
                    dead_letter_id=uuid.uuid5(ORIGINALS, f"{channel}:{accepted.feedback_number}"),
                )
            except Exception:
                # The cleaned row is registered; only the record of its original is missing.
                log.exception("could not keep the original of row %d", row.number)

    await asyncio.gather(*(keep(row, accepted) for row, accepted in cleaned))


def _reasons(error: Exception) -> list[str]:
    if isinstance(error, ValidationError):
        return [
            excerpt(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}", 500)
            for e in error.errors(include_url=False)
        ]
    return [excerpt(str(error), 500)]


__all__ = ["MAX_ROWS", "Contact", "records_router"]
