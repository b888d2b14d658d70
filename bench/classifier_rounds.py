"""How the classifier does on texts unlike its training set's: leave one round of training
data out (each round was written later, for other matters, voices and industries), train
on everything else, test on that round. Cross-validation (`bench.classifier_cv`) tests on
texts like the ones trained on and has run 2-4 points above the frozen set; this is the
nearer estimate that may be tuned on (issue #12). Never reads the frozen evaluation set.

    python -m bench.classifier_rounds

Prints per-field accuracy (and category) per round and their mean, and the urgent
decision's recall and share of other texts made urgent at thresholds around the
configured one (the rounds hold many deliberate look-alikes: the share runs high).
"""

from __future__ import annotations

import time

from bench.classifier_cv import FIELDS, Scored, accuracy, rates, score
from services.routing.classifier import Classifier, load_rulebook
from services.routing.classifier.model import TextModel, examples_in, training_files

# The rounds config/training/README.md describes, by their files' numbers.
ROUNDS = {
    "train_42-47": range(42, 48),
    "train_48-55": range(48, 56),
    "train_56-63": range(56, 64),
    "train_64-71": range(64, 72),
}


def category_accuracy(scored: list[Scored]) -> float:
    def category(subcategory: str) -> str:
        return subcategory.partition("/")[0]

    right = sum(
        category(s.model["subcategory"]) == category(s.expected["subcategory"]) for s in scored
    )
    return right / len(scored)


def run() -> list[str]:
    rules = Classifier(load_rulebook())
    files = training_files()
    lines: list[str] = []
    everything: list[Scored] = []
    means: dict[str, float] = dict.fromkeys((*FIELDS, "category"), 0.0)
    for name, numbers in ROUNDS.items():
        began = time.perf_counter()
        held = {f"train_{n:02d}.psv" for n in numbers}
        model = TextModel(examples_in([f for f in files if f.name not in held]), rules.rule_tokens)
        scored = score(model, examples_in([f for f in files if f.name in held]), rules)
        everything += scored
        found = {**accuracy(scored), "category": category_accuracy(scored)}
        for field, value in found.items():
            means[field] += value / len(ROUNDS)
        shown = ", ".join(f"{field} {value:.3f}" for field, value in found.items())
        lines.append(f"{name} ({len(scored)} texts): {shown} ({time.perf_counter() - began:.0f} s)")
    lines.append("mean of the rounds: " + ", ".join(f"{f} {v:.3f}" for f, v in means.items()))
    threshold = rules.book.model.urgent_threshold
    for at in (threshold - 0.05, threshold, threshold + 0.05):
        caught, raised = rates(everything, at)
        lines.append(f"urgent at {at:.2f}: recall {caught:.3f}, others made urgent {raised:.3f}")
    return lines


if __name__ == "__main__":
    for line in run():
        print(line, flush=True)
