"""A statistical model beside the rules: linear models over character n-grams and words,
trained on the labelled training set (`config/training/*.psv`), one per field.

Why: the rules know the words someone wrote into `config/classification.yaml`; customers
use others (paraphrase, slang, typos, formal letters, agents' summaries). Character
n-grams carry Chinese without a dictionary and survive typos; rjieba words and English
words (on word boundaries) carry meaning across phrasing. Logistic regression gives
probabilities (the confidence) and per-feature weights (the explanation: the features that
pushed the decision, named in `rules` as `model.<field>:<feature>`). Urgent is decided by a
score, the mean of the yes/no urgent model's P and the likeliest danger kind's P (one yes/no
model per kind: safety, property, outage, public opinion, fraud, data leak), at a threshold
chosen by cross-validation (`bench/classifier_cv.py`); the kind names the case's flag.
Type, subcategory, department and priority are decided together: the likeliest of the
combinations the training set holds (praise filed as an urgent billing error for logistics is
no decision a supervisor makes), by the product of the four models' probabilities.

Trained once (about 41 s for 11,334 texts on this machine's two shared cores) and cached on
disk by the hash of the training data, the lexicon, the rule book, this code and the
libraries' versions, so services start fast. The cache is a pickle (joblib) in the user's own cache folder
(`FEEDBACK_CACHE_DIR`): whoever can write there can run code as the service, like anyone
who can write its virtual environment.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

log = logging.getLogger(__name__)

CONFIG = Path(__file__).resolve().parents[3] / "config"
TRAINING = CONFIG / "training"
LEXICON = CONFIG / "lexicon.yaml"
VERSION = "4"
# The danger kinds of an urgent case (the training set's urgent flags): one yes/no model
# each beside the yes/no `urgent` model (see `TextModel.urgent_score`).
DANGERS = ("safety", "property", "business_outage", "public_opinion", "fraud", "data_leak")
DANGER_FIELDS = tuple(f"danger.{d}" for d in DANGERS)
FIELDS = ("type", "subcategory", "department", "priority", "emotion", "urgent", *DANGER_FIELDS)
# Regularisation (C of the logistic regressions), chosen by 5-fold CV on the training set
# (bench/classifier_cv.py): 16 against 8 raised subcategory 0.736 -> 0.746 and every other
# field a little; 32 and 64 gained no more than the runs vary.
C = 16.0
# A feature seen in one training text only is dropped: two thirds of the vocabulary, which
# made the model slow to load (1.4 s), for no accuracy (5-fold CV on 9,663 texts: every
# field within 0.4 points, subcategory 0.780 -> 0.781).
MIN_DF = 2
# The fields decided together, as one of the combinations seen in training.
JOINT = ("type", "subcategory", "department", "priority")
# This module's and the rules engine's source as this process imported them: read when
# the model is trained instead, a file edited since import would file a model made by the
# old code under the new code's key.
# evaluation.py parses the training files.
_CODE = b"".join(
    Path(__file__).with_name(name).read_bytes()
    for name in ("model.py", "engine.py", "evaluation.py")
)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


@dataclass(frozen=True)
class Example:
    text: str
    tier: str
    labels: dict[str, str]


class Prediction(NamedTuple):
    # A named tuple, not a frozen dataclass: nine are made per text, and a frozen
    # dataclass's __init__ costs about a microsecond each.
    label: str
    probability: float
    because: tuple[str, ...]  # the features that weighed most for the label


def normalized(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


@cache
def _segmenter() -> Any:
    import rjieba

    return rjieba


_ASCII_WORD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


@dataclass(frozen=True)
class Lexicon:
    """Concepts and their terms (config/lexicon.yaml): Chinese by substring, English on
    word boundaries (no ASCII letter or digit either side, as a regex's `(?<![a-z0-9])`).
    Both are one Aho-Corasick pass over the text, not a regex per concept."""

    chinese: Any  # an Aho-Corasick automaton: term -> concepts
    english: Any  # an Aho-Corasick automaton: term -> (its length, concepts)

    def concepts(self, norm: str) -> set[str]:
        found: set[str] = set()
        for _, names in self.chinese.iter(norm):
            found.update(names)
        last = len(norm) - 1
        for end, (length, names) in self.english.iter(norm):
            start = end - length + 1
            if (start == 0 or norm[start - 1] not in _ASCII_WORD) and (
                end == last or norm[end + 1] not in _ASCII_WORD
            ):
                found.update(names)
        return found


@cache
def lexicon(path: Path = LEXICON) -> Lexicon:
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    chinese: dict[str, set[str]] = {}
    english: dict[str, set[str]] = {}
    for name, groups in (raw or {}).items():
        for term in groups.get("zh", []):
            chinese.setdefault(normalized(str(term)), set()).add(name)
        for term in groups.get("en", []):
            english.setdefault(normalized(str(term)), set()).add(name)
    return Lexicon(
        _automaton({term: tuple(sorted(names)) for term, names in chinese.items()}),
        _automaton({term: (len(term), tuple(sorted(names))) for term, names in english.items()}),
    )


def _automaton(values: dict[str, Any]) -> Any:
    import ahocorasick

    values = {term: value for term, value in values.items() if term}
    if not values:
        return _Nothing()
    automaton = ahocorasick.Automaton()
    for term, value in values.items():
        automaton.add_word(term, value)
    automaton.make_automaton()
    return automaton


class _Nothing:
    def iter(self, _: str) -> list[Any]:
        return []


def features(text: str, tier: str = "normal") -> list[str]:
    """Tokens a model sees: CJK character uni-, bi- and trigrams, rjieba words, English
    words and word pairs, the lexicon's concepts (and pairs of them: a child and a small
    part together mean more than either), and the customer tier."""
    norm = normalized(text)
    tokens: list[str] = [f"tier={tier}"]
    concepts = sorted(lexicon().concepts(norm))
    tokens += [f"lex:{c}" for c in concepts]
    tokens += [f"lex:{a}&{b}" for i, a in enumerate(concepts) for b in concepts[i + 1 :]]
    cut = _segmenter().cut
    for run in _CJK.findall(norm):
        tokens += run
        tokens += [run[i : i + 2] for i in range(len(run) - 1)]
        tokens += [run[i : i + 3] for i in range(len(run) - 2)]
        tokens += [f"w:{w}" for w in cut(run) if len(w) > 1]
    words = _WORD.findall(norm)
    tokens += [f"e:{w}" for w in words]
    tokens += [f"e:{a}_{b}" for a, b in pairwise(words)]
    return tokens


def _identity(tokens: list[str]) -> list[str]:
    return tokens


# TextModel's attributes that `_prepare` derives from the others.
_DERIVED = frozenset({"owner", "labels", "decided", "urgent_yes", "feature_names", "joint_columns"})


class TextModel:
    """One vectorizer, one logistic regression per field. `rule_tokens` adds tokens of its own
    to each text's (the rules' findings: the model learns how far to trust each rule)."""

    def __init__(
        self,
        examples: Sequence[Example],
        rule_tokens: Callable[[str, str], list[str]] | None = None,
    ) -> None:
        self.rule_tokens = rule_tokens
        self.vectorizer = TfidfVectorizer(
            analyzer=_identity, sublinear_tf=True, min_df=MIN_DF, dtype=np.float32
        )
        matrix = self.vectorizer.fit_transform([self.tokens(e.text, e.tier) for e in examples])
        self.names = np.asarray(self.vectorizer.get_feature_names_out())
        self.vocabulary: dict[str, int] = dict(self.vectorizer.vocabulary_)
        # Explanations name words, concepts and rules, never bare character n-grams (which
        # could be a fragment of a name the masking missed).
        self.explainable = np.array(
            [name.startswith(("w:", "e:", "lex:", "r.", "tier=")) for name in self.names],
            dtype=np.float32,
        )
        self.idf = self.vectorizer.idf_.astype(np.float32)
        # Every field's weights side by side (features x classes), so one text is scored
        # for all fields by one small product instead of a library call per field; a
        # two-class model becomes two columns (-w/2, w/2), whose softmax is its sigmoid.
        columns: list[np.ndarray] = []
        biases: list[np.ndarray] = []
        self.fields: dict[str, tuple[int, int, tuple[str, ...]]] = {}
        at = 0
        for name in FIELDS:
            labels = [e.labels[name] for e in examples]
            if name in DANGER_FIELDS and len(set(labels)) < 2:
                continue  # no case of this danger kind to learn from
            model = LogisticRegression(C=C, max_iter=2000, class_weight="balanced")
            model.fit(matrix, labels)
            coef, bias = model.coef_, model.intercept_
            if coef.shape[0] == 1:
                coef = np.vstack([-coef[0] / 2, coef[0] / 2])
                bias = np.array([-bias[0] / 2, bias[0] / 2])
            columns.append(coef.T.astype(np.float32))
            biases.append(bias.astype(np.float32))
            classes = tuple(str(c) for c in model.classes_)
            self.fields[name] = (at, at + len(classes), classes)
            at += len(classes)
        # Row-major: a text gathers the rows of its features (np.hstack of the transposed
        # coefficients is column-major, which made that gather 16 µs instead of 1).
        self.weights = np.ascontiguousarray(np.hstack(columns))
        self.bias = np.concatenate(biases)
        # Where each field's classes start and how many: one softmax per field, all at once.
        spans = list(self.fields.values())
        self.starts = np.array([start for start, _, _ in spans], dtype=np.int64)
        self.sizes = np.array([end - start for start, end, _ in spans], dtype=np.int64)
        # The (type, subcategory, department, priority) combinations supervisors have filed.
        self.combinations: tuple[tuple[str, ...], ...] = tuple(
            sorted({tuple(e.labels[name] for name in JOINT) for e in examples})
        )
        # The "yes" column of each danger kind's model.
        self.dangers = tuple(
            (name.removeprefix("danger."), start + classes.index("yes"))
            for name, (start, _, classes) in self.fields.items()
            if name in DANGER_FIELDS and "yes" in classes
        )
        self._prepare()

    def _prepare(self) -> None:
        """What `predict` reads besides the weights, derived from them: not pickled, so a
        cached model stays as small and as quick to load as before."""
        spans = list(self.fields.values())
        # Per column: its field's index (to spread a field's max and sum over its classes)
        # and its label; the fields decided by their own argmax (the danger kinds are not).
        self.owner = np.repeat(np.arange(len(spans), dtype=np.int64), self.sizes)
        self.labels: list[str] = [label for _, _, classes in spans for label in classes]
        # Each combination as its four columns in `p` (a stored model is only ever loaded by
        # the code that made it: `environment_digest`).
        self.joint_columns = np.array(
            [
                [
                    self.fields[name][0] + self.fields[name][2].index(label)
                    for name, label in zip(JOINT, combination, strict=True)
                ]
                for combination in self.combinations
            ],
            dtype=np.int64,
        ).reshape(-1, len(JOINT))
        self.decided = tuple(
            (name, start, end)
            for name, (start, end, _) in self.fields.items()
            if name not in DANGER_FIELDS and name not in JOINT
        )
        urgent = self.fields.get("urgent")
        self.urgent_yes = (
            urgent[0] + urgent[2].index("yes") if urgent and "yes" in urgent[2] else -1
        )
        self.feature_names: list[str] = self.names.tolist()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _DERIVED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._prepare()

    def tokens(self, text: str, tier: str) -> list[str]:
        return features(text, tier) + (self.rule_tokens(text, tier) if self.rule_tokens else [])

    def predict(
        self,
        text: str,
        tier: str = "normal",
        explain: int = 3,
        tokens: list[str] | None = None,
        explained: Collection[str] | None = None,
    ) -> dict[str, Prediction]:
        """Every field's label and probability, the danger kind and the urgent score; the
        features that weighed most for the fields in `explained` (all when None; each
        field's explanation is computed on its own, so a subset changes none of them)."""
        # Per text, the work is a handful of small numpy calls; the Python around them is
        # kept to lists and dicts (numpy scalars cost ~100 ns an access), which is what
        # holds throughput on one core (bench/classifier.py).
        vocabulary = self.vocabulary
        known = [
            column
            for column in map(
                vocabulary.get, tokens if tokens is not None else self.tokens(text, tier)
            )
            if column is not None
        ]
        # Columns in the order their tokens first occur, as the arithmetic below always saw
        # them (a different order could change a sum in its last bit).
        counted = Counter(known)
        present = list(counted)
        cols = np.array(present, dtype=np.int64)
        values = self.idf[cols]
        if len(present) < len(known):  # sublinear tf: 1 + log(n), exactly 1 for n = 1
            counts = np.array(list(counted.values()), dtype=np.float32)
            values = (1.0 + np.log(counts)) * values
        norm = float(np.sqrt(values.dot(values)))  # np.linalg.norm's own computation
        if norm:
            values /= norm
        rows = self.weights.take(cols, axis=0)  # the features' weights for every class
        scores = values @ rows + self.bias
        owner = self.owner
        scores -= np.maximum.reduceat(scores, self.starts).take(owner)
        exp = np.exp(scores)
        probabilities = exp / np.add.reduceat(exp, self.starts).take(owner)
        p = probabilities.tolist()
        # Log-probabilities summed per combination: the product of the four models'.
        joint = np.log(probabilities + 1e-9).take(self.joint_columns).sum(axis=1)
        best = self.joint_columns[int(joint.argmax())].tolist()
        chosen: list[tuple[str, int]] = list(zip(JOINT, best, strict=True))  # (field, column)
        for name, start, end in self.decided:
            part = p[start:end]
            chosen.append((name, start + part.index(max(part))))  # the first of equal maxima
        # The likeliest danger kind (its own yes/no model).
        kind, p_danger, danger_column = "none", 0.0, -1
        if self.dangers:
            kind, danger_column = max(self.dangers, key=lambda danger: p[danger[1]])
            p_danger = p[danger_column]
            chosen.append(("danger", danger_column))
        told = chosen if explained is None else [c for c in chosen if c[0] in explained]
        because = dict(
            zip(
                [name for name, _ in told],
                self._because(values, rows, cols, present, [column for _, column in told], explain),
                strict=True,
            )
        )
        labels = self.labels
        found: dict[str, Prediction] = {
            name: Prediction(labels[column], p[column], because.get(name, ()))
            for name, column in chosen
        }
        if danger_column >= 0:
            found["danger"] = Prediction(kind, p_danger, because.get("danger", ()))
        else:
            found["danger"] = Prediction("none", 0.0, ())
        p_urgent = p[self.urgent_yes] if self.urgent_yes >= 0 else 0.0  # whichever won
        found["urgent_p"] = Prediction("yes", p_urgent, ())
        # The urgent decision's score: the mean of P(urgent) and the likeliest danger kind's
        # P (each its own logistic regression over the same features). Two views of one
        # question disagree on look-alikes more than on dangers: in 5-fold CV on the training
        # set, at recall 0.95, 9.8 % of other texts are made urgent (with the rules' danger
        # flags) against 10.8 % by P(urgent) alone. The threshold is the config's.
        score = (p_urgent + p_danger) / 2 if danger_column >= 0 else p_urgent
        found["urgent_yes"] = Prediction("yes", score, found["danger"].because)
        return found

    def _because(
        self,
        values: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        present: list[int],
        columns: list[int],
        explain: int,
    ) -> list[tuple[str, ...]]:
        """For each of `columns` (a class of a field), the explainable features that pushed
        it most."""
        if explain <= 0 or not present or not columns:
            return [() for _ in columns]
        weighed = rows.take(columns, axis=1) * (values * self.explainable[cols])[:, None]
        ranked = (-weighed).argsort(axis=0)[:explain].T.tolist()  # each column on its own
        names = self.feature_names
        return [
            tuple(names[present[row]] for row in rows_of if pushes[row] > 0)
            for rows_of, pushes in zip(ranked, weighed.T.tolist(), strict=True)
        ]


def examples_from(lines: Iterable[tuple[str, dict[str, str], str]]) -> list[Example]:
    """(text, expected labels, tier) as `evaluation.load_labelled` reads them."""
    out = []
    for text, expected, tier in lines:
        labels = {
            "type": expected["type"],
            "subcategory": f"{expected['category']}/{expected['subcategory']}",
            "department": expected["department"],
            "priority": expected["priority"],
            "emotion": expected["emotion"],
            "urgent": "yes" if expected["priority"] == "urgent" else "no",
        }
        flags = set(expected.get("flags", "").split(","))
        for kind, name in zip(DANGERS, DANGER_FIELDS, strict=True):
            urgent_kind = expected["priority"] == "urgent" and kind in flags
            labels[name] = "yes" if urgent_kind else "no"
        out.append(Example(text, tier, labels))
    return out


def examples_in(paths: Iterable[Path]) -> list[Example]:
    """The labelled files' texts as examples, in file order."""
    from services.routing.classifier.evaluation import load_labelled

    return examples_from(
        (i.text, i.expected, i.tier) for path in paths for i in load_labelled(path)
    )


def training_files(folder: Path = TRAINING) -> list[Path]:
    return sorted(folder.glob("*.psv"))


def environment_digest(fingerprint: bytes) -> Any:
    """A sha256 of what shapes the tokens and the model besides the training data: this
    code, the rules engine, the libraries, the lexicon and `fingerprint` (the rule book). A
    model made under another digest may read texts differently: it is not reused."""
    digest = hashlib.sha256(VERSION.encode() + fingerprint)
    digest.update(_CODE)
    for library in ("scikit-learn", "rjieba", "numpy", "pyahocorasick"):
        digest.update(f"{library}={importlib.metadata.version(library)}".encode())
    digest.update(LEXICON.read_bytes() if LEXICON.exists() else b"")
    return digest


# Models this process has loaded or trained, by the hash of what they were trained on.
_LOADED: dict[str, TextModel] = {}


def trained(
    folder: Path,
    rule_tokens: Callable[[str, str], list[str]] | None,
    fingerprint: bytes = b"",
) -> TextModel | None:
    """The model trained on `folder` (None when it holds no data), from the disk cache
    when the data, `fingerprint` (what `rule_tokens` depends on: the rule book) and this
    module's version are unchanged."""
    files = training_files(folder)
    if not files:
        log.warning("no training data in %s: the classifier uses its rules alone", folder)
        return None
    digest = environment_digest(fingerprint)
    for path in files:
        digest.update(path.read_bytes())
    cache_dir = Path(
        os.environ.get("FEEDBACK_CACHE_DIR") or Path.home() / ".cache" / "feedback-platform"
    )
    key = digest.hexdigest()[:16]
    if key in _LOADED:
        _LOADED[key].rule_tokens = rule_tokens
        return _LOADED[key]
    cached = cache_dir / f"classifier-{key}.joblib"
    if cached.exists():
        try:
            model: TextModel = joblib.load(cached)
            model.rule_tokens = rule_tokens  # not stored: the live rules
            _LOADED[key] = model
            return model
        except Exception:  # a cache from another library version: train again
            log.info("classifier cache %s unreadable; training again", cached)
    model = TextModel(examples_in(files), rule_tokens)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        model.rule_tokens = None  # the rules are not pickled with it
        joblib.dump(model, partial)
        partial.replace(cached)
    except OSError as error:
        log.info("classifier cache not written (%s)", error)
    finally:
        model.rule_tokens = rule_tokens
    _LOADED[key] = model
    return model
