"""Learning from people (`feedback train`): the next model is trained on the training set
plus the supervisors' corrections in the event store, measured with the active model on the
frozen evaluation set, and activated only when it is not worse (`not_worse`).

Corrections: a case a person reclassified (`Reclassified`) or whose priority a supervisor
overrode (`PriorityOverridden`) is one labelled text: the registered description (masked
by intake before routing classified it: what the classifier saw) and the customer tier,
labelled with the case's classification after its last correction (fields nobody corrected
keep their classified values). A correction whose text is in the frozen set is left out
(counted, never shown): the frozen set is never trained on.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import ProgrammingError
from eventsourcing.utils import get_topic
from pydantic import BaseModel, ConfigDict

from contracts.codes import Emotion, FeedbackType, Priority
from services.cases.domain import Case
from services.cases.store import CaseStore
from services.routing.classifier.engine import Classifier, FeedbackText
from services.routing.classifier.evaluation import (
    FIELDS,
    LabelledItem,
    evaluate,
    expected_labels,
    load_labelled,
)
from services.routing.classifier.model import TextModel, examples_from, normalized
from services.routing.classifier.registry import ActiveChanged, ModelRegistry, NewVersion
from services.routing.classifier.rules import RuleBook

log = logging.getLogger(__name__)

# The events that are a person's correction of a classification.
CORRECTION_EVENTS = (Case.Reclassified, Case.PriorityOverridden)  # type: ignore[attr-defined]
# Cases rebuilt per query.
_CHUNK = 500

# -- "not worse" ------------------------------------------------------------------------

# A field may lose at most this much accuracy (1 point: about 5 texts of the frozen set's
# 483, within what a few changed training texts move), while the mean of all fields may
# not fall at all: small trade-offs between fields, no net loss.
FIELD_TOLERANCE = 0.01
# The target for non-urgent texts made urgent: a candidate may rise up to it, never
# above it (nor above the active model's share when that is already higher).
FALSE_ALARM_CEILING = 0.05
# Triage (low confidence) may grow by at most 2 points: it costs a person's time per case.
TRIAGE_TOLERANCE = 0.02

NOT_WORSE_RULE = (
    "not worse than the active model on the frozen set: urgent recall not lower (no dangerous "
    "case less caught); non-urgent texts made urgent at most max(5 %, the active's); every "
    "field's accuracy at most 1 point lower and the mean of all fields not lower; the share "
    "sent to triage at most 2 points higher"
)


class Figures(BaseModel):
    """A classifier's aggregate figures on the frozen set (never an item)."""

    model_config = ConfigDict(frozen=True)

    items: int
    accuracy: dict[str, float]  # per field of evaluation.FIELDS
    urgent: int  # texts labelled urgent
    caught: int  # of them, decided urgent
    others: int  # texts not labelled urgent
    raised: int  # of them, decided urgent
    triaged: int

    @property
    def urgent_recall(self) -> float:
        return self.caught / self.urgent if self.urgent else 1.0

    @property
    def false_alarms(self) -> float:
        return self.raised / self.others if self.others else 0.0

    @property
    def triage_share(self) -> float:
        return self.triaged / self.items if self.items else 0.0

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracy.values()) / len(self.accuracy) if self.accuracy else 0.0


def frozen_figures(classifier: Classifier, items: Sequence[LabelledItem]) -> Figures:
    report = evaluate(classifier, list(items), "frozen")
    urgent = caught = others = raised = triaged = 0
    for item in items:
        decision = classifier.classify(FeedbackText(item.text, customer_tier=item.tier))
        expected_urgent = item.expected["priority"] == Priority.urgent.value
        made_urgent = decision.priority == Priority.urgent
        urgent += expected_urgent
        caught += expected_urgent and made_urgent
        others += not expected_urgent
        raised += (not expected_urgent) and made_urgent
        triaged += decision.needs_triage
    return Figures(
        items=len(items),
        accuracy={name: report.accuracy(name) for name in FIELDS},
        urgent=urgent,
        caught=caught,
        others=others,
        raised=raised,
        triaged=triaged,
    )


@dataclass(frozen=True)
class Verdict:
    not_worse: bool
    reasons: tuple[str, ...]  # why not, one line each (empty when not worse)


def not_worse(candidate: Figures, active: Figures) -> Verdict:
    """`NOT_WORSE_RULE`, on two classifiers' figures on the same frozen set. Urgent recall
    has no tolerance: a missed dangerous case waits 24-72 h instead of 4 h."""
    reasons: list[str] = []
    # Compared as counts over the same items: no rounding decides a tie.
    if candidate.caught * active.urgent < active.caught * candidate.urgent:
        reasons.append(
            f"urgent recall {candidate.urgent_recall:.1%} below the active's "
            f"{active.urgent_recall:.1%}"
        )
    ceiling = max(FALSE_ALARM_CEILING, active.false_alarms)
    if candidate.false_alarms > ceiling + 1e-12:
        reasons.append(f"non-urgent made urgent {candidate.false_alarms:.1%} above {ceiling:.1%}")
    for name, accuracy in active.accuracy.items():
        got = candidate.accuracy.get(name, 0.0)
        if got < accuracy - FIELD_TOLERANCE - 1e-12:
            reasons.append(f"{name} {got:.1%} more than 1 point below the active's {accuracy:.1%}")
    if candidate.mean_accuracy < active.mean_accuracy - 1e-12:
        reasons.append(
            f"mean accuracy {candidate.mean_accuracy:.2%} below the active's "
            f"{active.mean_accuracy:.2%}"
        )
    if candidate.triage_share > active.triage_share + TRIAGE_TOLERANCE + 1e-12:
        reasons.append(
            f"sent to triage {candidate.triage_share:.1%}, more than 2 points above the "
            f"active's {active.triage_share:.1%}"
        )
    return Verdict(not reasons, tuple(reasons))


def side_by_side(active: Figures, candidate: Figures) -> list[str]:
    """The two sets of figures as lines of a table (aggregates only)."""
    rows: list[tuple[str, str, str]] = [
        (name, f"{active.accuracy[name]:.1%}", f"{candidate.accuracy.get(name, 0.0):.1%}")
        for name in active.accuracy
    ]
    rows += [
        ("mean of fields", f"{active.mean_accuracy:.2%}", f"{candidate.mean_accuracy:.2%}"),
        (
            "urgent recall",
            f"{active.urgent_recall:.1%} ({active.caught}/{active.urgent})",
            f"{candidate.urgent_recall:.1%} ({candidate.caught}/{candidate.urgent})",
        ),
        (
            "non-urgent made urgent",
            f"{active.false_alarms:.1%} ({active.raised}/{active.others})",
            f"{candidate.false_alarms:.1%} ({candidate.raised}/{candidate.others})",
        ),
        ("sent to triage", f"{active.triage_share:.1%}", f"{candidate.triage_share:.1%}"),
    ]
    lines = [f"  {'':<24}{'active':>18}{'candidate':>18}"]
    lines += [f"  {name:<24}{a:>18}{c:>18}" for name, a, c in rows]
    return lines


# -- corrections from the event store -------------------------------------------------


class Correction(BaseModel):
    """One corrected case as a labelled text."""

    model_config = ConfigDict(frozen=True)

    feedback_id: UUID
    feedback_number: str
    text: str
    tier: str
    labels: dict[str, str]  # as evaluation.load_labelled's `expected`


@dataclass
class Corrections:
    found: list[Correction] = field(default_factory=list)
    # Corrected cases left out: their labels are not in the rule book any more, or their
    # text is in the frozen set.
    unusable: int = 0
    in_frozen_set: int = 0


def _labels(classification: dict[str, Any], book: RuleBook) -> dict[str, str] | None:
    """The case's classification as training labels; None when a label is unknown."""
    try:
        kind = FeedbackType(str(classification["type"])).value
        priority = Priority(str(classification["priority"])).value
        emotion = Emotion(str(classification["emotion"])).value
        category = str(classification.get("category") or "")
        subcategory = str(classification.get("subcategory") or "")
        department = str(classification["department"])
    except (KeyError, ValueError):
        return None
    known = category in book.categories and subcategory in book.categories[category].subcategories
    if not known or department not in book.departments:
        return None
    # `repeat` comes from the customer's history, not from the text.
    flags = {str(f) for f in classification.get("flags") or ()} - {"repeat"}
    return expected_labels(kind, category, subcategory, priority, department, emotion, flags)


def corrected_case_ids(store: CaseStore) -> list[UUID]:
    """Cases with at least one correction, oldest correction first."""
    datastore: Any = store.process_recorder.datastore  # type: ignore[attr-defined]
    table = store.process_recorder.events_table_name  # type: ignore[attr-defined]
    topics = [get_topic(event) for event in CORRECTION_EVENTS]
    try:
        with datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                f"SELECT originator_id, min(notification_id) AS first FROM {table} "
                "WHERE topic = ANY(%s) GROUP BY originator_id ORDER BY first",
                (topics,),
            )
            return [UUID(str(row["originator_id"])) for row in cursor.fetchall()]
    except ProgrammingError as error:  # eventsourcing's wrapping of psycopg's
        if isinstance(error.__cause__, psycopg.errors.UndefinedTable):
            return []  # no case was ever recorded in this database
        raise


class FrozenTexts:
    """Whether a case's text is (nearly) one of the frozen set's: the stored description is
    masked (phone, ID, card numbers, e-mail, the customer's own name and address) and may be
    lightly edited, so texts are compared by their character trigrams, masks and digits
    left out: one whose trigrams are at least `WITHIN` in a frozen text, and make up at
    least `COVERS` of that text's, counts as that text."""

    WITHIN = 0.8
    COVERS = 0.5
    _NOISE = re.compile(r"[\s*＊0-9０-９]+|\[地址已隐藏\]")

    def __init__(self, texts: Iterable[str]) -> None:
        self.grams = [self._grams(text) for text in texts]
        self.index: dict[str, list[int]] = defaultdict(list)
        for number, grams in enumerate(self.grams):
            for gram in grams:
                self.index[gram].append(number)

    @classmethod
    def _grams(cls, text: str) -> frozenset[str]:
        bare = cls._NOISE.sub("", normalized(text).casefold())
        return frozenset(bare[i : i + 3] for i in range(max(1, len(bare) - 2)))

    def holds(self, text: str) -> bool:
        grams = self._grams(text)
        shared = Counter(number for gram in grams for number in self.index.get(gram, ()))
        return any(
            count >= self.WITHIN * len(grams) and count >= self.COVERS * len(self.grams[number])
            for number, count in shared.items()
        )


def read_corrections(
    store: CaseStore, book: RuleBook, frozen: Iterable[LabelledItem] = ()
) -> Corrections:
    """Every corrected case as a labelled text (see the module docstring)."""
    frozen_texts = FrozenTexts(item.text for item in frozen)
    result = Corrections()
    ids = corrected_case_ids(store)
    for start in range(0, len(ids), _CHUNK):
        cases = store.get_cases(ids[start : start + _CHUNK])
        for case_id in ids[start : start + _CHUNK]:
            case = cases.get(case_id)
            labels = _labels(case.classification or {}, book) if case else None
            if case is None or labels is None:
                result.unusable += 1
                continue
            text = str(case.registration["description"])
            if frozen_texts.holds(text):
                result.in_frozen_set += 1
                continue
            result.found.append(
                Correction(
                    feedback_id=case_id,
                    feedback_number=case.feedback_number,
                    text=text,
                    tier=str(case.registration.get("customer_tier") or "normal"),
                    labels=labels,
                )
            )
    return result


# -- training and the decision ----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    active: Figures
    active_source: str  # "version N" or "config/training (no stored model active)"
    candidate: Figures
    verdict: Verdict
    training_items: int
    corrections: Corrections
    training_digest: str
    stored_version: int | None  # None: nothing stored (dry run, or refused by ActiveChanged)
    activated: bool
    note: str = ""


def training_digest(files: Sequence[Path], corrections: Sequence[Correction]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for correction in corrections:
        digest.update(correction.model_dump_json().encode())
    return digest.hexdigest()


def train_candidate(
    book: RuleBook, files: Sequence[Path], corrections: Sequence[Correction]
) -> Classifier:
    """The rules plus a model trained on `files` and the corrections."""
    classifier = Classifier(book)
    items = [(i.text, i.expected, i.tier) for path in files for i in load_labelled(path)]
    items += [(c.text, c.labels, c.tier) for c in corrections]
    classifier.model = TextModel(examples_from(items), classifier.rule_tokens)
    return classifier


def train(
    registry: ModelRegistry,
    store: CaseStore,
    book: RuleBook,
    frozen: Sequence[LabelledItem],
    files: Sequence[Path],
    fallback_folder: Path,
    created_by: str,
    dry_run: bool = False,
) -> Outcome:
    """Train a candidate, measure it and the active model (the registry's, else the one
    trained from `fallback_folder`, as the services would run) on `frozen`, and store the
    candidate, activating it when `not_worse` (nothing is stored on a dry run)."""
    fingerprint = book.model_dump_json().encode()
    corrections = read_corrections(store, book, frozen)
    # The version the table marks active, whether or not it can run here: a new one
    # replaces it (a model built for other code, libraries or rules is not loaded, and the
    # services run the files' model instead: that is what the candidate is compared with).
    marked_active = registry.active_version()
    active = Classifier.trained(book, fallback_folder, registry)
    if active.model_version is not None:
        active_source = f"version {active.model_version}"
    elif marked_active is not None:
        active_source = (
            f"{fallback_folder} (version {marked_active} is active but was built for other "
            "code, libraries or rules: the services run the files' model)"
        )
    else:
        active_source = f"{fallback_folder} (no stored model active)"
    candidate = train_candidate(book, files, corrections.found)
    active_figures = frozen_figures(active, frozen)
    candidate_figures = frozen_figures(candidate, frozen)
    verdict = not_worse(candidate_figures, active_figures)
    digest = training_digest(files, corrections.found)
    items = sum(len(load_labelled(path)) for path in files) + len(corrections.found)
    outcome = Outcome(
        active=active_figures,
        active_source=active_source,
        candidate=candidate_figures,
        verdict=verdict,
        training_items=items,
        corrections=corrections,
        training_digest=digest,
        stored_version=None,
        activated=False,
    )
    if dry_run:
        return outcome
    decision = (
        f"activated: {NOT_WORSE_RULE}"
        if verdict.not_worse
        else "not activated: " + "; ".join(verdict.reasons)
    )
    new = NewVersion(
        created_by=created_by,
        training_digest=digest,
        training_items=items,
        corrections=len(corrections.found),
        figures=_stored(candidate_figures),
        compared_with={"source": active_source, **_stored(active_figures)},
        decision=decision,
    )
    assert candidate.model is not None
    try:
        version = registry.record(
            new, fingerprint, candidate.model if verdict.not_worse else None, marked_active
        )
    except ActiveChanged as changed:
        # Compared with a model that is no longer active: kept as a figure, not activated.
        version = registry.record(
            new.model_copy(update={"decision": f"not activated: {changed}"}),
            fingerprint,
            None,
            None,
        )
        return replace(outcome, stored_version=version, note=str(changed))
    return replace(outcome, stored_version=version, activated=verdict.not_worse)


def _stored(figures: Figures) -> dict[str, Any]:
    return {
        **figures.model_dump(),
        "urgent_recall": figures.urgent_recall,
        "false_alarms": figures.false_alarms,
        "triage_share": figures.triage_share,
        "mean_accuracy": figures.mean_accuracy,
    }
