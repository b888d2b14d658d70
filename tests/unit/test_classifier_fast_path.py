"""The model's per-text fast path (`TextModel.predict`: one gather of weight rows, softmaxes by
field, explanations from the same arrays) against a plain reference built from what the
model was trained with: its fitted TfidfVectorizer and its weight matrix, on every text of
the training set. Speed work on the fast path must not change a decision."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml

from services.routing.classifier import Classifier, load_rulebook
from services.routing.classifier.evaluation import TRAINING, load_labelled
from services.routing.classifier.model import (
    DANGER_FIELDS,
    JOINT,
    LEXICON,
    TextModel,
    lexicon,
    normalized,
)


@pytest.fixture(scope="module")
def hybrid() -> Classifier:
    classifier = Classifier.trained(load_rulebook())
    assert classifier.model is not None
    return classifier


def _training_texts() -> list[tuple[str, str]]:
    return [
        (i.text, i.tier) for path in sorted(TRAINING.glob("*.psv")) for i in load_labelled(path)
    ]


def _reference(model: TextModel, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tf-idf row as the vectorizer makes it, and every field's probabilities (float64)."""
    row = model.vectorizer.transform([tokens]).toarray()[0].astype(np.float64)
    scores = row @ model.weights.astype(np.float64) + model.bias
    probabilities = np.empty_like(scores)
    for start, end, _ in model.fields.values():
        part = np.exp(scores[start:end] - scores[start:end].max())
        probabilities[start:end] = part / part.sum()
    return row, probabilities


def test_predict_matches_the_reference_on_the_training_set(hybrid: Classifier) -> None:
    model = hybrid.model
    assert model is not None
    texts = _training_texts()
    assert len(texts) >= 2900  # the whole training set (config/training/*.psv)
    for text, tier in texts:
        tokens = model.tokens(text, tier)
        found = model.predict(text, tier, tokens=tokens)
        row, probabilities = _reference(model, tokens)
        # Type, subcategory, department and priority: the combination with the greatest
        # product of probabilities among those the model was trained on.
        combined = [
            sum(
                np.log(probabilities[model.fields[name][0] + model.fields[name][2].index(label)])
                for name, label in zip(JOINT, combination, strict=True)
            )
            for combination in model.combinations
        ]
        ranked = np.argsort(combined)
        best_combination = dict(zip(JOINT, model.combinations[ranked[-1]], strict=True))
        joint_tie = combined[ranked[-1]] - combined[ranked[-2]] <= 1e-4
        for name, (start, end, classes) in model.fields.items():
            if name in DANGER_FIELDS:
                continue
            if name in JOINT:
                best = start + classes.index(best_combination[name])
                clear = not joint_tie
            else:
                best = start + int(np.argmax(probabilities[start:end]))
                clear = probabilities[best] - np.sort(probabilities[start:end])[-2] > 1e-4
            if clear:  # not a float-rounding tie
                assert found[name].label == classes[best - start], (text, name)
            assert found[name].probability == pytest.approx(
                probabilities[start + classes.index(found[name].label)], abs=1e-4
            )
        # The explanation: explainable features only, strongest first, none left out that
        # pushed the label harder than the weakest named.
        start, _, classes = model.fields["type"]
        column = start + classes.index(found["type"].label)
        pushes = {
            str(model.names[i]): row[i] * model.weights[i, column]
            for i in np.flatnonzero(row)
            if model.explainable[i]
        }
        named = [pushes[name] for name in found["type"].because]
        assert named == sorted(named, reverse=True)
        assert all(push > 0 for push in named)
        unnamed = [p for n, p in pushes.items() if n not in found["type"].because]
        weakest = named[-1] if len(named) == 3 else 0.0
        assert max(unnamed, default=0.0) <= weakest + 1e-5, text


def test_explaining_fewer_fields_changes_nothing_else(hybrid: Classifier) -> None:
    model = hybrid.model
    assert model is not None
    for text, tier in _training_texts()[::25]:
        every = model.predict(text, tier)
        some = model.predict(text, tier, explained={"type", "danger"})
        for name, prediction in every.items():
            assert some[name].label == prediction.label
            assert some[name].probability == prediction.probability
            if name in ("type", "danger", "urgent_yes"):
                assert some[name].because == prediction.because
            elif name not in ("urgent_p",):
                assert some[name].because == ()


@cache
def _english_patterns() -> list[tuple[str, re.Pattern[str]]]:
    """The lexicon's English terms as one regex per concept (how they were matched before
    the single automaton pass)."""
    raw = yaml.safe_load(LEXICON.read_text(encoding="utf-8"))
    patterns = []
    for name, groups in raw.items():
        terms = [re.escape(normalized(str(t))) for t in groups.get("en", [])]
        if terms:
            joined = "|".join(terms)
            patterns.append((name, re.compile(r"(?<![a-z0-9])(?:" + joined + r")(?![a-z0-9])")))
    return patterns


def _by_regex(norm: str) -> set[str]:
    found = {name for _, names in lexicon().chinese.iter(norm) for name in names}
    return found | {name for name, pattern in _english_patterns() if pattern.search(norm)}


@pytest.mark.parametrize(
    "text",
    [
        "gas leak! smell of gas near the er",
        "xfire fire9 9fire fire",
        "the charger is smoking, sparks everywhere",
        "sparkly and unfired",
        "my kids' toy came off",
        "插座冒烟了, fire",
        "",
    ],
)
def test_english_concepts_on_word_boundaries_as_a_regex_finds_them(text: str) -> None:
    assert lexicon().concepts(text) == _by_regex(text)


def test_english_concepts_agree_with_the_regex_on_the_training_set() -> None:
    for text, _ in _training_texts():
        norm = normalized(text)
        assert lexicon().concepts(norm) == _by_regex(norm), text


def test_a_cached_model_predicts_as_the_trained_one(hybrid: Classifier, tmp_path: Path) -> None:
    """What `predict` derives from the weights is not pickled but rebuilt on load."""
    model = hybrid.model
    assert model is not None
    rules = model.rule_tokens
    model.rule_tokens = None  # as `trained` stores it
    try:
        joblib.dump(model, tmp_path / "model.joblib")
    finally:
        model.rule_tokens = rules
    loaded = joblib.load(tmp_path / "model.joblib")
    assert "feature_names" not in model.__getstate__()
    loaded.rule_tokens = model.rule_tokens
    for text, tier in _training_texts()[::50]:
        assert loaded.predict(text, tier) == model.predict(text, tier), text


def test_the_rules_decide_alike_in_every_process() -> None:
    """Two flags pulling towards two emotions with equal weight (wide_impact: anxious,
    public_opinion: angry): the tie must not be broken by a set's hash order."""
    text = "我们是一家律师事务所，想批量采购二十台打印机，请问有企业报价吗？"
    script = (
        "from services.routing.classifier import Classifier, load_rulebook\n"
        f"print(Classifier(load_rulebook()).rule_tokens({text!r}, 'normal'))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in range(6)
    }
    assert len(seen) == 1, seen
