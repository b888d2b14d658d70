"""Records entered by staff: batch files from stores and letters (`store`, `letter`),
callback findings (`callback`), and customers' supplements to earlier feedback.

Batch files use the registration-table layout (客户反馈登记表), Chinese or English
headers. Each row is checked on its own: valid rows are registered (durably, so a Kafka
outage loses nothing), refused rows are reported with their row numbers and reasons.
Re-importing the same file registers nothing twice: a row's channel reference is the
file's hash and the row number unless the file gives its own reference.
"""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, UploadFile
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from contracts.codes import Channel, Emotion, FeedbackType
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.intake.channels.common import CustomerIn, FeedbackAccepted, Short, Text, Tier, answer
from services.intake.pii_vault import Contact
from services.intake.registration import IntakeUnavailable, Registrar, Submission, UnknownFeedback

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
MAX_ROWS = 10_000


class BatchRow(BaseModel):
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


class ImportSummary(BaseModel):
    file_sha256: str
    rows: int
    taken: list[dict[str, Any]]
    refused: list[RowRefused]


def read_table(data: bytes, filename: str) -> list[dict[str, Any]]:
    """Rows of a CSV (UTF-8 or GB18030) or XLSX file as header -> value."""
    if filename.lower().endswith(".xlsx"):
        from openpyxl import load_workbook

        sheet = load_workbook(io.BytesIO(data), read_only=True, data_only=True).worksheets[0]
        values = list(sheet.iter_rows(values_only=True))
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("gb18030")
        values = list(csv.reader(io.StringIO(text)))
    if not values:
        return []
    header = [str(h or "").strip() for h in values[0]]
    return [
        dict(zip(header, row, strict=False))
        for row in values[1:]
        if any(c not in (None, "") for c in row)
    ]


def row_to_batch(raw: dict[str, Any]) -> BatchRow:
    fields: dict[str, Any] = {}
    customer: dict[str, Any] = {}
    unknown = [h for h in raw if h and h not in HEADERS]
    if unknown:
        raise ValueError(f"unknown columns {unknown}")
    for header, value in raw.items():
        if value in (None, ""):
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
    received = fields.get("received_at")
    if isinstance(received, datetime) and received.tzinfo is None:
        fields["received_at"] = received
    return BatchRow.model_validate({**fields, "customer": customer})


class CallbackIn(BaseModel):
    """A problem found during a callback (回访) becomes new feedback, linked to the earlier one."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    callback_id: Annotated[str, Field(min_length=1, max_length=100)]
    earlier_feedback_number: Annotated[str, Field(pattern=FEEDBACK_NUMBER_PATTERN)]
    agent_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{1,63}$")]
    customer: CustomerIn
    description: Annotated[str, Field(min_length=1, max_length=5000)]
    customer_tier: Tier = "normal"
    product_model: Short | None = None
    expectation: Text | None = None
    emotion: Emotion | None = None


class SupplementIn(BaseModel):
    """Information the customer supplies to an earlier feedback, from any channel."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    channel: Channel
    text: Annotated[str, Field(max_length=5000)] = ""
    product_model: Short | None = None
    service_type: Short | None = None
    purchase_date: date | None = None
    received_at: AwareDatetime | None = None


def records_router(registrar: Registrar, zone: Any) -> APIRouter:
    router = APIRouter(tags=["intake"])

    @router.post("/v1/channels/batch/{channel}", response_model=ImportSummary)
    async def import_batch(channel: Literal["store", "letter"], file: UploadFile) -> ImportSummary:
        data = await file.read(50 * 1024 * 1024 + 1)
        if len(data) > 50 * 1024 * 1024:
            raise HTTPException(413, detail="batch files are at most 50 MiB")
        file_hash = hashlib.sha256(data).hexdigest()
        try:
            rows = read_table(data, file.filename or "upload.csv")
        except Exception as error:
            raise HTTPException(422, detail=f"cannot read {file.filename}: {error}") from error
        if len(rows) > MAX_ROWS:
            raise HTTPException(422, detail=f"at most {MAX_ROWS} rows per file")
        summary = ImportSummary(file_sha256=file_hash, rows=len(rows), taken=[], refused=[])
        for number, raw in enumerate(rows, start=2):  # row 1 is the header
            try:
                row = row_to_batch(raw)
            except (ValueError, ValidationError) as error:
                summary.refused.append(RowRefused(row=number, errors=_reasons(error)))
                continue
            received = (
                row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=zone)
            )
            submission = Submission(
                channel=Channel(channel),
                description=row.description,
                contact=row.customer.contact(),
                receiver=row.receiver,
                received_at=received,
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
            accepted = await registrar.register_durably(submission)
            summary.taken.append(
                {
                    "row": number,
                    "feedback_number": accepted.feedback_number,
                    "duplicate": accepted.duplicate,
                }
            )
        return summary

    @router.post("/v1/channels/callback", status_code=202, response_model=FeedbackAccepted)
    async def callback_finding(body: CallbackIn) -> FeedbackAccepted | JSONResponse:
        if await registrar.find(body.earlier_feedback_number) is None:
            raise HTTPException(422, detail=f"no earlier feedback {body.earlier_feedback_number}")
        submission = Submission(
            channel=Channel.callback,
            description=body.description,
            contact=body.customer.contact(),
            receiver=body.agent_id,
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
        number: Annotated[str, Path(pattern=FEEDBACK_NUMBER_PATTERN)], body: SupplementIn
    ) -> dict[str, str]:
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


def _reasons(error: Exception) -> list[str]:
    if isinstance(error, ValidationError):
        return [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in error.errors(include_url=False)
        ]
    return [str(error)]


__all__ = ["Contact", "records_router"]
