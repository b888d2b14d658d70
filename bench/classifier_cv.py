"""The classifier tuned where it may be: 5-fold cross-validation on the TRAINING set
(`config/training`), never on the frozen evaluation set.

Prints, for the rules alone and the rules with the model: per-field accuracy; for the
urgent decision, the recall and the share of other texts made urgent at each threshold, by
the yes/no urgent model's P alone (the decision before issue #12's second round), by the
urgent score (the mean of P(urgent) and the likeliest danger kind's P) and by the decision
as routing makes it (a rule's danger flag, or the score at the threshold), and the
threshold that CV chooses (the highest that keeps recall at least 0.95); and
the share sent to triage (and the accuracy of what is not) at each `triage_below`. The
thresholds in `config/classification.yaml` (`model:`) are chosen from these figures.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter

import numpy as np

from services.routing.classifier import Classifier, FeedbackText, load_rulebook
from services.routing.classifier.evaluation import TRAINING, LabelledItem, load_labelled
from services.routing.classifier.model import TextModel, examples_from

FIELDS = ("type", "subcategory", "department", "priority", "emotion")
FOLDS = 5
RECALL_FOR_THRESHOLD = 0.97


def expected(item: LabelledItem) -> dict[str, str]:
    e = item.expected
    return {
        "type": e["type"],
        "subcategory": f"{e['category']}/{e['subcategory']}",
        "department": e["department"],
        "priority": e["priority"],
        "emotion": e["emotion"],
    }


def run(folds: int = FOLDS) -> list[str]:
    items = [i for path in sorted(TRAINING.glob("*.psv")) for i in load_labelled(path)]
    random.Random(7).shuffle(items)
    rules = Classifier(load_rulebook())
    correct: dict[str, Counter[str]] = {"rules": Counter(), "model": Counter()}
    urgent: list[tuple[float, float, bool, bool]] = []  # P(urgent), score, rule flag, truth
    danger_flags = set(rules.book.priority.urgent_flags)
    confident: list[tuple[float, bool]] = []
    began = time.perf_counter()
    for fold in range(folds):
        test = items[fold::folds]
        train = [i for n, i in enumerate(items) if n % folds != fold]
        model = TextModel(
            examples_from((i.text, i.expected, i.tier) for i in train), rules.rule_tokens
        )
        for item in test:
            want = expected(item)
            ruled = rules.classify(FeedbackText(item.text, customer_tier=item.tier))
            got_rules = {
                "type": ruled.type.value,
                "subcategory": f"{ruled.category}/{ruled.subcategory}",
                "department": ruled.department,
                "priority": ruled.priority.value,
                "emotion": ruled.emotion.value,
            }
            found = model.predict(item.text, item.tier, explain=0)
            for field in FIELDS:
                correct["rules"][field] += got_rules[field] == want[field]
                correct["model"][field] += found[field].label == want[field]
            urgent.append(
                (
                    found["urgent_p"].probability,
                    found["urgent_yes"].probability,
                    bool(set(ruled.flags) & danger_flags),
                    want["priority"] == "urgent",
                )
            )
            both_right = (
                found["type"].label == want["type"]
                and found["subcategory"].label == want["subcategory"]
            )
            confident.append(
                (min(found["type"].probability, found["subcategory"].probability), both_right)
            )
    total = len(items)
    lines = [f"{total} training texts, {folds} folds, {time.perf_counter() - began:.0f} s"]
    for name, counts in correct.items():
        shown = ", ".join(f"{f} {counts[f] / total:.3f}" for f in FIELDS)
        lines.append(f"{name}: {shown}")
    positives = sum(1 for *_, u in urgent if u)
    negatives = total - positives

    def rates(by: str, threshold: float) -> tuple[float, float]:
        """Recall and the share of others made urgent, deciding `by` P(urgent) alone, by
        the score, or as routing decides (a rule's danger flag, or the score)."""
        caught = raised = 0
        for p, score, ruled, truth in urgent:
            if by == "P(urgent)":
                made = p >= threshold
            else:
                made = score >= threshold or (by == "decision" and ruled)
            caught += made and truth
            raised += made and not truth
        return caught / positives, raised / negatives

    for threshold in np.arange(0.2, 0.75, 0.05):
        parts = []
        for by in ("P(urgent)", "score", "decision"):
            recall, raised = rates(by, threshold)
            parts.append(f"{by} recall {recall:.3f}, others made urgent {raised:.3f}")
        lines.append(f"urgent at {threshold:.2f}: " + "; ".join(parts))
    steps = [round(float(t), 2) for t in np.arange(0.05, 0.95, 0.01)]
    # The threshold keeps CV recall at least RECALL_FOR_THRESHOLD, two points above the
    # issue's 0.95: texts unlike the training set's (the frozen set's) have scored about that
    # much lower at the same threshold (2026-11-29: CV 0.950 at 0.41, frozen 0.949).
    for wanted in (0.95, RECALL_FOR_THRESHOLD):
        chosen = max((t for t in steps if rates("decision", t)[0] >= wanted), default=None)
        if chosen is not None:
            recall, raised = rates("decision", chosen)
            lines.append(
                f"urgent_threshold {chosen:.2f} is the highest with decision recall >= "
                f"{wanted:.2f}: recall {recall:.3f}, others made urgent {raised:.3f}"
            )
    for threshold in (0.1, 0.15, 0.2, 0.25, 0.3):
        kept = [right for p, right in confident if p >= threshold]
        lines.append(
            f"triage below {threshold:.2f}: {1 - len(kept) / total:.3f} triaged, "
            f"type and subcategory right on {sum(kept) / max(1, len(kept)):.3f} of the rest"
        )
    return lines


if __name__ == "__main__":
    for line in run(int(sys.argv[1]) if len(sys.argv) > 1 else FOLDS):
        print(line, flush=True)
