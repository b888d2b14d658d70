"""Help for the agent registering feedback (phone or counter): the classifier's suggestion
for the text typed so far, and the customer's recent feedback found by phone or e-mail.

Mounted by `routing_router`: routing holds the classifier, and already opens the PII
vault (reveal-only) and records access to personal data.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from contracts.codes import CUSTOMER_TIER_PATTERN, Channel
from services.access import audit
from services.access.http import require
from services.access.roles import Actor
from services.common.boundary import Checked, text_flaw
from services.common.masking import mask_contacts
from services.intake.pii_vault import PiiVault
from services.projections import registrations
from services.routing.classifier import FeedbackText
from services.routing.service import RoutingService

RECENT_DAYS = 30
# What intake accepts as a phone (CustomerIn): a partial number typed so far is refused.
PHONE_PATTERN = r"^\+?[\d\- ]{5,20}$"


class SuggestionIn(Checked):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    text: Annotated[str, Field(min_length=1, max_length=5000)]
    channel: Channel | None = None
    customer_tier: Annotated[str, Field(pattern=CUSTOMER_TIER_PATTERN)] = "normal"


class Suggestion(BaseModel):
    """The fields `feedback classify` prints for one text."""

    type: str
    category: str | None
    subcategory: str | None
    priority: str
    department: str
    emotion: str
    flags: list[str]
    confidence: float
    rules: list[str] = Field(description="the model's labels and the rules that fired: why")
    needs_triage: bool
    supervisor_attention: bool
    first_response_hours: float


class RecentItem(BaseModel):
    feedback_number: str
    received_at: datetime
    feedback_type: str | None
    status: str


class RecentQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: Annotated[str | None, Field(pattern=PHONE_PATTERN)] = None
    email: Annotated[str | None, Field(max_length=254)] = None
    limit: Annotated[int, Field(ge=1, le=50)] = 10


class RecentFeedback(BaseModel):
    days: int
    items: list[RecentItem]


def intake_assist_router(routing: RoutingService, vault: PiiVault) -> APIRouter:
    router = APIRouter(tags=["intake"])

    @router.post("/v1/classification/suggestion", response_model=Suggestion)
    async def suggest(
        body: SuggestionIn, _: Annotated[Actor, require("intake.staff")]
    ) -> Suggestion:
        """What routing would decide for this text now; nothing is registered. Without the
        customer's history, so a repeat complaint's raise is not in it. The text is masked
        first, as intake masks a description before routing classifies it."""
        feedback = FeedbackText(
            mask_contacts(body.text),
            body.channel.value if body.channel else None,
            body.customer_tier,
        )
        decision = await asyncio.to_thread(routing.classifier.classify, feedback)
        return Suggestion.model_validate(decision.as_dict())

    @router.post("/v1/customers/recent-feedback", response_model=RecentFeedback)
    async def recent_feedback(
        actor: Annotated[Actor, require("intake.staff")], body: RecentQuery
    ) -> RecentFeedback:
        """The feedback of the customer with this phone (dashes, spaces, +86, full-width
        digits all match) or e-mail in the last 30 days: number, time, type and status,
        nothing else.

        Not limited to the agent's departments: the person registering a call must know the
        caller already has open feedback wherever it is handled (to add to it rather than
        register it twice), and the answer says no more than the customer could tell them.
        What is in a case stays behind the case's own department check.

        A POST with the phone or e-mail in the body: in a query string they would be written
        to every proxy's access log."""
        phone, email, limit = body.phone, body.email, body.limit
        if not phone and not email:
            raise HTTPException(422, detail="give a phone or an e-mail")
        if email and text_flaw(email):
            raise HTTPException(422, detail=f"email {text_flaw(email)}")
        found = [
            await vault.customer_of_phone(phone) if phone else None,
            await vault.customer_of_email(email) if email else None,
        ]
        customers = list(dict.fromkeys(ref for ref in found if ref is not None))
        if not customers:
            return RecentFeedback(days=RECENT_DAYS, items=[])
        # Linking a phone or e-mail to a customer's feedback is access to personal data:
        # recorded before the answer, as a reveal is (never the phone or e-mail itself).
        by = " and ".join(name for name, given in (("phone", phone), ("email", email)) if given)
        async with vault.pool.connection() as conn:
            for customer_ref in customers:
                await audit.record(
                    conn, actor, "lookup", customer_ref, f"recent feedback at intake (by {by})"
                )
        since = datetime.now(UTC) - timedelta(days=RECENT_DAYS)
        rows = await registrations.recent_of_customers(vault.pool, customers, since, limit)
        return RecentFeedback(days=RECENT_DAYS, items=[RecentItem(**row) for row in rows])

    return router
