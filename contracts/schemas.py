"""JSON Schemas of the contract messages, generated from the models."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from contracts.events import (
    CASE_EVENTS,
    CustomerCorrespondence,
    DeadLetter,
    FeedbackReceived,
    ReportPublished,
)

MESSAGES: tuple[type[BaseModel], ...] = (
    FeedbackReceived,
    CustomerCorrespondence,
    *CASE_EVENTS,
    DeadLetter,
    ReportPublished,
)


def schema_of(model: type[BaseModel]) -> dict[str, object]:
    schema = model.model_json_schema()
    schema["x-topic"] = getattr(model, "TOPIC", None)
    schema["x-key"] = "kind:period" if model is ReportPublished else "feedback_id"
    return schema


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for model in MESSAGES:
        path = folder / f"{model.__name__}.v1.json"
        path.write_text(json.dumps(schema_of(model), ensure_ascii=False, indent=2) + "\n")
        written.append(path)
    return written
