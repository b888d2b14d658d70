"""The classifier tuned where it may be: 5-fold cross-validation on the TRAINING set
(`config/training`), never on the frozen evaluation set.

Prints, for the rules alone and the rules with the model: per-field accuracy; for the
urgent decision, the recall and the share of other texts made urgent at each threshold, by
the yes/no urgent model's P alone (the decision before issue #12's second round), by the
urgent score (the mean of P(urgent) and the likeliest danger kind's P) and by the decision
as routing makes it (a rule's danger flag, or the score at the threshold), and the
threshold that CV chooses (the highest that keeps recall at least 0.97); and
the share sent to triage (and the accuracy of what is not) at each `triage_below`. The
thresholds in `config/classification.yaml` (`model:`) are chosen from these figures.
`bench.classifier_candidates` runs the same folds to decide whether new data joins.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass

import numpy as np

from services.routing.classifier import Classifier, FeedbackText, load_rulebook
from services.routing.classifier.model import Example, TextModel, examples_in, training_files

FIELDS = ("type", "subcategory", "department", "priority", "emotion")
FOLDS = 5
RECALL_FOR_THRESHOLD = 0.97


@dataclass(frozen=True)
class Scored:
    """One training text as the fold that did not train on it saw it."""

    expected: dict[str, str]  # the example's labels
    model: dict[str, str]  # the rules with the model: label per field of FIELDS
    rules: dict[str, str]  # the rules alone
    p_urgent: float  # the yes/no urgent model's P
    score: float  # the urgent score the threshold applies to
    ruled_danger: bool  # a rule raised a danger flag (urgent whatever the score)
    confidence: float  # min(P(type), P(subcategory)), what triage_below applies to

    @property
    def urgent(self) -> bool:
        return self.expected["urgent"] == "yes"


def training_examples() -> list[Example]:
    """The training set in the order every CV here splits it."""
    items = examples_in(training_files())
    random.Random(7).shuffle(items)
    return items


def cross_validate(
    items: list[Example], extra: list[Example], rules: Classifier, folds: int = FOLDS
) -> list[Scored]:
    """Each of `items` scored by a model trained on the other folds plus `extra` (texts
    always trained on, never tested)."""
    scored: list[Scored] = []
    for fold in range(folds):
        train = [e for n, e in enumerate(items) if n % folds != fold]
        scored += score(TextModel(train + extra, rules.rule_tokens), items[fold::folds], rules)
    return scored


def score(model: TextModel, tests: list[Example], rules: Classifier) -> list[Scored]:
    """`tests` as the rules alone and the rules with `model` decide them."""
    danger_flags = set(rules.book.priority.urgent_flags)
    scored: list[Scored] = []
    for example in tests:
        ruled = rules.classify(FeedbackText(example.text, customer_tier=example.tier))
        found = model.predict(example.text, example.tier, explain=0)
        scored.append(
            Scored(
                expected=example.labels,
                model={field: found[field].label for field in FIELDS},
                rules={
                    "type": ruled.type.value,
                    "subcategory": f"{ruled.category}/{ruled.subcategory}",
                    "department": ruled.department,
                    "priority": ruled.priority.value,
                    "emotion": ruled.emotion.value,
                },
                p_urgent=found["urgent_p"].probability,
                score=found["urgent_yes"].probability,
                ruled_danger=bool(set(ruled.flags) & danger_flags),
                confidence=min(found["type"].probability, found["subcategory"].probability),
            )
        )
    return scored


def accuracy(scored: list[Scored], by: str = "model") -> dict[str, float]:
    return {
        field: sum(getattr(s, by)[field] == s.expected[field] for s in scored) / len(scored)
        for field in FIELDS
    }


def rates(scored: list[Scored], threshold: float, by: str = "decision") -> tuple[float, float]:
    """Urgent recall and the share of other texts made urgent, deciding `by` P(urgent)
    alone, by the score, or as routing decides (a rule's danger flag, or the score)."""
    caught = raised = 0
    for s in scored:
        if by == "P(urgent)":
            made = s.p_urgent >= threshold
        else:
            made = s.score >= threshold or (by == "decision" and s.ruled_danger)
        caught += made and s.urgent
        raised += made and not s.urgent
    positives = sum(s.urgent for s in scored)
    return caught / max(1, positives), raised / max(1, len(scored) - positives)


def run(folds: int = FOLDS) -> list[str]:
    began = time.perf_counter()
    scored = cross_validate(training_examples(), [], Classifier(load_rulebook()), folds)
    total = len(scored)
    lines = [f"{total} training texts, {folds} folds, {time.perf_counter() - began:.0f} s"]
    for name in ("rules", "model"):
        shown = ", ".join(f"{f} {a:.3f}" for f, a in accuracy(scored, name).items())
        lines.append(f"{name}: {shown}")
    for threshold in np.arange(0.2, 0.75, 0.05):
        parts = []
        for by in ("P(urgent)", "score", "decision"):
            recall, raised = rates(scored, threshold, by)
            parts.append(f"{by} recall {recall:.3f}, others made urgent {raised:.3f}")
        lines.append(f"urgent at {threshold:.2f}: " + "; ".join(parts))
    steps = [round(float(t), 2) for t in np.arange(0.05, 0.95, 0.01)]
    # The threshold keeps CV recall at least RECALL_FOR_THRESHOLD, two points above the
    # issue's 0.95: texts unlike the training set's (the frozen set's) have scored about that
    # much lower at the same threshold (2026-11-29: CV 0.950 at 0.41, frozen 0.949).
    for wanted in (0.95, RECALL_FOR_THRESHOLD):
        chosen = max((t for t in steps if rates(scored, t)[0] >= wanted), default=None)
        if chosen is not None:
            recall, raised = rates(scored, chosen)
            lines.append(
                f"urgent_threshold {chosen:.2f} is the highest with decision recall >= "
                f"{wanted:.2f}: recall {recall:.3f}, others made urgent {raised:.3f}"
            )
    for threshold in (0.1, 0.15, 0.2, 0.25, 0.3):
        kept = [
            s.model["type"] == s.expected["type"]
            and s.model["subcategory"] == s.expected["subcategory"]
            for s in scored
            if s.confidence >= threshold
        ]
        lines.append(
            f"triage below {threshold:.2f}: {1 - len(kept) / total:.3f} triaged, "
            f"type and subcategory right on {sum(kept) / max(1, len(kept)):.3f} of the rest"
        )
    return lines


if __name__ == "__main__":
    for line in run(int(sys.argv[1]) if len(sys.argv) > 1 else FOLDS):
        print(line, flush=True)
