"""Accuracy of the classifier against labelled feedback.

`config/training/*.psv` is the training set (the model is trained on it and the rules were
tuned on parts of it). `tests/data/frozen_eval.psv` is the frozen evaluation set: written
before the model was built, committed once, never tuned on; only its aggregate figures
(per-field accuracy, confusion, urgent recall) are ever shown, never its items.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.routing.classifier.engine import Classifier, Decision, FeedbackText

FIELDS = ("type", "category", "subcategory", "priority", "department", "emotion", "flags")
ROOT = Path(__file__).resolve().parents[3]
TRAINING = ROOT / "config" / "training"
TUNE_SET = TRAINING / "labelled_tune.psv"
HOLDOUT_SET = TRAINING / "labelled_holdout.psv"
FROZEN_EVAL = ROOT / "tests" / "data" / "frozen_eval.psv"


@dataclass(frozen=True)
class LabelledItem:
    text: str
    expected: dict[str, str]
    tier: str
    line: int


def expected_labels(
    kind: str,
    category: str,
    subcategory: str,
    priority: str,
    department: str,
    emotion: str,
    flags: Iterable[str],
) -> dict[str, str]:
    """A labelled text's `expected`: the fields as `observed` gives them, flags sorted in
    one comma list (`-` or nothing: none)."""
    return {
        "type": kind,
        "category": category,
        "subcategory": subcategory,
        "priority": priority,
        "department": department,
        "emotion": emotion,
        "flags": ",".join(sorted(f for f in flags if f and f != "-")),
    }


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
                expected=expected_labels(
                    kind, category, subcategory, priority, department, emotion, flags.split(",")
                ),
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


@dataclass
class Urgency:
    """How the dangerous cases fared: recall of urgent, and the share of others made urgent."""

    urgent: int = 0
    caught: int = 0
    others: int = 0
    raised: int = 0
    triaged: int = 0

    def lines(self) -> Iterable[str]:
        recall = self.caught / self.urgent if self.urgent else 0.0
        false_alarms = self.raised / self.others if self.others else 0.0
        yield f"  urgent recall {recall:6.1%}  ({self.caught}/{self.urgent})"
        yield f"  non-urgent made urgent {false_alarms:6.1%}  ({self.raised}/{self.others})"


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


def frozen_report(classifier: Classifier, items: list[LabelledItem]) -> list[str]:
    """The frozen set's figures: per-field accuracy, urgent recall and false alarms, the
    triage share and the confusion of type and priority. Never an item."""
    report = evaluate(classifier, items, "frozen evaluation set (never tuned on)")
    urgency = Urgency()
    confusion: dict[str, dict[tuple[str, str], int]] = {"type": {}, "priority": {}}
    for item in items:
        decision = classifier.classify(FeedbackText(item.text, customer_tier=item.tier))
        got = observed(decision)
        expected_urgent = item.expected["priority"] == "urgent"
        made_urgent = got["priority"] == "urgent"
        urgency.urgent += expected_urgent
        urgency.caught += expected_urgent and made_urgent
        urgency.others += not expected_urgent
        urgency.raised += (not expected_urgent) and made_urgent
        urgency.triaged += decision.needs_triage
        for field, table in confusion.items():
            key = (item.expected[field], got[field])
            table[key] = table.get(key, 0) + 1
    lines = list(report.lines())
    lines += list(urgency.lines())
    lines.append(f"  sent to triage {urgency.triaged / max(1, len(items)):6.1%}")
    for field, table in confusion.items():
        labels = sorted({a for a, _ in table} | {b for _, b in table})
        lines.append(f"  confusion of {field} (rows expected, columns decided):")
        lines.append("    " + " ".join(f"{label[:10]:>10}" for label in ["", *labels]))
        for expected in labels:
            cells = [table.get((expected, decided), 0) for decided in labels]
            lines.append("    " + f"{expected[:10]:>10} " + " ".join(f"{c:>10}" for c in cells))
    return lines
