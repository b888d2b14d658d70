"""Accuracy of the rules against labelled feedback (`tests/data/*.psv`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.routing.classifier.engine import Classifier, Decision, FeedbackText

FIELDS = ("type", "category", "subcategory", "priority", "department", "emotion", "flags")
DATA = Path(__file__).resolve().parents[3] / "tests" / "data"
TUNE_SET = DATA / "labelled_tune.psv"
HOLDOUT_SET = DATA / "labelled_holdout.psv"


@dataclass(frozen=True)
class LabelledItem:
    text: str
    expected: dict[str, str]
    tier: str
    line: int


def load_labelled(path: Path) -> list[LabelledItem]:
    items = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        parts = [p.strip() for p in raw.split(" | ")]
        if len(parts) != 8:
            raise ValueError(f"{path.name}:{number}: expected 8 fields, got {len(parts)}")
        text, kind, category_path, priority, department, emotion, flags, tier = parts
        category, _, subcategory = category_path.partition("/")
        items.append(
            LabelledItem(
                text=text,
                expected={
                    "type": kind,
                    "category": category,
                    "subcategory": subcategory,
                    "priority": priority,
                    "department": department,
                    "emotion": emotion,
                    "flags": ",".join(sorted(f for f in flags.split(",") if f and f != "-")),
                },
                tier=tier,
                line=number,
            )
        )
    return items


def observed(decision: Decision) -> dict[str, str]:
    return {
        "type": decision.type.value,
        "category": decision.category or "",
        "subcategory": decision.subcategory or "",
        "priority": decision.priority.value,
        "department": decision.department,
        "emotion": decision.emotion.value,
        "flags": ",".join(sorted(decision.flags)),
    }


@dataclass
class Report:
    name: str
    total: int
    correct: dict[str, int]
    misses: list[tuple[LabelledItem, dict[str, str]]]

    def accuracy(self, field: str) -> float:
        return self.correct[field] / self.total if self.total else 0.0

    def lines(self) -> Iterable[str]:
        yield f"{self.name}: {self.total} items"
        for field in FIELDS:
            yield f"  {field:<12} {self.accuracy(field):6.1%}  ({self.correct[field]}/{self.total})"


def evaluate(classifier: Classifier, items: list[LabelledItem], name: str) -> Report:
    correct = dict.fromkeys(FIELDS, 0)
    misses = []
    for item in items:
        got = observed(classifier.classify(FeedbackText(item.text, customer_tier=item.tier)))
        wrong = False
        for field in FIELDS:
            if got[field] == item.expected[field]:
                correct[field] += 1
            else:
                wrong = True
        if wrong:
            misses.append((item, got))
    return Report(name, len(items), correct, misses)
