"""Does new training data help? 5-fold cross-validation on the training set's own texts with
the candidate files always in the training folds (never tested on), beside the same folds
without them: the way each round of `config/training/train_*.psv` was admitted (issue #12).

    python -m bench.classifier_candidates config/training/candidates/train_72.psv ...

Prints per-field accuracy without and with the candidates, and the urgent decision's recall
and share of other texts made urgent at thresholds around the configured one. Never reads
the frozen evaluation set.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.classifier_cv import FOLDS, accuracy, cross_validate, rates, training_examples
from services.routing.classifier import Classifier, load_rulebook
from services.routing.classifier.model import examples_in


def run(candidates: list[Path]) -> list[str]:
    items = training_examples()
    extra = examples_in(candidates)
    rules = Classifier(load_rulebook())
    threshold = rules.book.model.urgent_threshold
    lines = [f"{len(items)} training texts, {len(extra)} candidates, {FOLDS} folds"]
    for name, added in (("without", []), ("with", extra)):
        began = time.perf_counter()
        scored = cross_validate(items, added, rules)
        shown = ", ".join(f"{field} {a:.3f}" for field, a in accuracy(scored).items())
        lines.append(f"{name} candidates: {shown} ({time.perf_counter() - began:.0f} s)")
        for at in (threshold - 0.05, threshold, threshold + 0.05):
            caught, raised = rates(scored, at)
            lines.append(f"  urgent at {at:.2f}: recall {caught:.3f}, others {raised:.3f}")
    return lines


if __name__ == "__main__":
    for line in run([Path(arg) for arg in sys.argv[1:]]):
        print(line, flush=True)
