"""Does new training data help? 5-fold cross-validation on the training set's own texts with
the candidate files always in the training folds (never tested on), beside the same folds
without them: the way each round of `config/training/train_*.psv` was admitted (issue #12).

    python -m bench.classifier_candidates config/training/candidates/train_72.psv ...

Prints per-field accuracy without and with the candidates, and the urgent decision's recall
and share of other texts made urgent at thresholds around the configured one. Never reads
the frozen evaluation set.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from pathlib import Path

from services.routing.classifier import Classifier, FeedbackText, load_rulebook
from services.routing.classifier.evaluation import TRAINING, load_labelled
from services.routing.classifier.model import Example, TextModel, examples_from

FIELDS = ("type", "subcategory", "department", "priority", "emotion")
FOLDS = 5


def cross_validate(
    items: list[Example], extra: list[Example], rules: Classifier
) -> tuple[dict[str, float], list[tuple[float, bool, bool]]]:
    """Accuracy per field, and per text (urgent score, a rule's danger flag, truly urgent)."""
    correct: Counter[str] = Counter()
    urgent: list[tuple[float, bool, bool]] = []
    danger_flags = set(rules.book.priority.urgent_flags)
    for fold in range(FOLDS):
        train = [e for n, e in enumerate(items) if n % FOLDS != fold]
        model = TextModel(train + extra, rules.rule_tokens)
        for example in items[fold::FOLDS]:
            found = model.predict(example.text, example.tier, explain=0)
            for field in FIELDS:
                correct[field] += found[field].label == example.labels[field]
            ruled = rules.classify(FeedbackText(example.text, customer_tier=example.tier))
            urgent.append(
                (
                    found["urgent_yes"].probability,
                    bool(set(ruled.flags) & danger_flags),
                    example.labels["urgent"] == "yes",
                )
            )
    return {field: correct[field] / len(items) for field in FIELDS}, urgent


def run(candidates: list[Path]) -> list[str]:
    def examples(paths: list[Path]) -> list[Example]:
        labelled = [item for path in paths for item in load_labelled(path)]
        return examples_from((i.text, i.expected, i.tier) for i in labelled)

    items = examples(sorted(TRAINING.glob("*.psv")))
    random.Random(7).shuffle(items)  # the split bench.classifier_cv uses
    extra = examples(candidates)
    rules = Classifier(load_rulebook())
    threshold = rules.book.model.urgent_threshold
    lines = [f"{len(items)} training texts, {len(extra)} candidates, {FOLDS} folds"]
    for name, added in (("without", []), ("with", extra)):
        began = time.perf_counter()
        accuracy, urgent = cross_validate(items, added, rules)
        shown = ", ".join(f"{field} {accuracy[field]:.3f}" for field in FIELDS)
        lines.append(f"{name} candidates: {shown} ({time.perf_counter() - began:.0f} s)")
        positives = sum(truth for *_, truth in urgent)
        for at in (threshold - 0.05, threshold, threshold + 0.05):
            made = [(score >= at or ruled, truth) for score, ruled, truth in urgent]
            caught = sum(m and t for m, t in made) / max(1, positives)
            raised = sum(m and not t for m, t in made) / max(1, len(urgent) - positives)
            lines.append(f"  urgent at {at:.2f}: recall {caught:.3f}, others {raised:.3f}")
    return lines


if __name__ == "__main__":
    for line in run([Path(arg) for arg in sys.argv[1:]]):
        print(line, flush=True)
