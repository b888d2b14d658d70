"""Classifier throughput on one core: the labelled texts classified over and over."""

from __future__ import annotations

import time

from services.routing.classifier import Classifier, FeedbackText, load_rulebook
from services.routing.classifier.evaluation import HOLDOUT_SET, TUNE_SET, load_labelled


def run(seconds: float = 5.0) -> list[str]:
    began = time.perf_counter()
    classifier = Classifier(load_rulebook())
    built = time.perf_counter() - began
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
    return [
        f"rule book compiled in {built * 1000:.0f} ms",
        f"classified {done} texts (mean {mean_chars:.0f} chars) in {elapsed:.1f}s on one core: "
        f"{done / elapsed:,.0f} texts/s ({elapsed / done * 1e6:.0f} µs each)",
    ]


if __name__ == "__main__":
    for line in run():
        print(line)
