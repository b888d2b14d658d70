"""The input line of `feedback classify`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from contracts.codes import CUSTOMER_TIER_PATTERN, Channel


class ClassifyInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: Annotated[str, Field(min_length=1, max_length=20_000)]
    channel: Channel | None = None
    customer_tier: Annotated[str, Field(pattern=CUSTOMER_TIER_PATTERN)] = "normal"
    customer_ref: str | None = None
