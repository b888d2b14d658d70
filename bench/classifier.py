"""Classifier throughput on one core: the labelled texts classified over and over, by the
rules with the model (as routing runs it) and by the rules alone."""

from __future__ import annotations

import time

from services.routing.classifier import Classifier, FeedbackText, load_rulebook
from services.routing.classifier.evaluation import HOLDOUT_SET, TUNE_SET, load_labelled


def run(seconds: float = 5.0) -> list[str]:
    began = time.perf_counter()
    trained = Classifier.trained(load_rulebook())
    built = time.perf_counter() - began
    lines = [f"rules and model ready in {built * 1000:.0f} ms (trained, or from the cache)"]
    for name, classifier in (
        ("rules and model", trained),
        ("rules alone", Classifier(load_rulebook())),
    ):
        lines += [f"{name}: " + _throughput(classifier, seconds)]
    return lines


def _throughput(classifier: Classifier, seconds: float) -> str:
    texts = [
        FeedbackText(i.text, customer_tier=i.tier)
        for i in load_labelled(TUNE_SET) + load_labelled(HOLDOUT_SET)
    ]
    done = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        for text in texts:
            classifier.classify(text)
        done += len(texts)
    elapsed = time.perf_counter() - began
    mean_chars = sum(len(t.text) for t in texts) / len(texts)
    return (
        f"classified {done} texts (mean {mean_chars:.0f} chars) in {elapsed:.1f}s on one core: "
        f"{done / elapsed:,.0f} texts/s ({elapsed / done * 1e6:.0f} µs each)"
    )


if __name__ == "__main__":
    for line in run():
        print(line)
