"""The classifier: one pass of a multi-pattern automaton over the text, then decisions.

Every decision names the rules that fired (`group.label:term`) and a confidence; the
configuration is the rule book, this module only applies it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ahocorasick

from contracts.codes import Emotion, FeedbackType, Priority
from services.routing.classifier.model import TRAINING, TextModel, features, trained
from services.routing.classifier.rules import Flag, Rule, RuleBook

if TYPE_CHECKING:
    from services.routing.classifier.registry import ModelRegistry

PRIORITY_ORDER: tuple[Priority, ...] = (
    Priority.low,
    Priority.medium,
    Priority.high,
    Priority.urgent,
)
PROBLEM_FREE_CATEGORIES = frozenset({"other"})


@dataclass(frozen=True)
class FeedbackText:
    text: str
    channel: str | None = None
    customer_tier: str = "normal"
    customer_ref: str | None = None


@dataclass(frozen=True)
class History:
    """Categories of the same customer's feedback within the repeat window (open or closed)."""

    recent_categories: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    type: FeedbackType
    category: str | None
    subcategory: str | None
    priority: Priority
    department: str
    emotion: Emotion
    flags: tuple[Flag, ...]
    confidence: float
    rules: tuple[str, ...]
    needs_triage: bool
    supervisor_attention: bool
    first_response_hours: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "category": self.category,
            "subcategory": self.subcategory,
            "priority": self.priority.value,
            "department": self.department,
            "emotion": self.emotion.value,
            "flags": list(self.flags),
            "confidence": round(self.confidence, 3),
            "rules": list(self.rules),
            "needs_triage": self.needs_triage,
            "supervisor_attention": self.supervisor_attention,
            "first_response_hours": self.first_response_hours,
        }


@dataclass
class _Scores:
    """Scores per label within one group, and which rules fired."""

    by_label: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    fired: list[str] = field(default_factory=list)

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.by_label.items(), key=lambda item: -item[1])


@dataclass(frozen=True)
class _RuleRef:
    group: str  # "sub", "type", "emotion", "flag", "signal"
    label: str
    index: int
    weight: float
    negatable: bool


# Which flag a danger concept of the lexicon stands for, when the model finds a case urgent
# that no rule flagged.
CONCEPT_FLAGS: dict[str, Flag] = {
    "fire": "safety",
    "shock": "safety",
    "injury": "safety",
    "choking": "safety",
    "gas": "safety",
    "flood": "property",
    "outage": "business_outage",
    "media": "public_opinion",
    "fraud": "fraud",
    "leak": "data_leak",
}


# The fields whose model explanations a decision names (the danger kind's stand for the
# urgent score's): the others' are not computed.
_EXPLAINED = frozenset({"type", "subcategory", "department", "priority", "danger"})
# What a message's length is counted without: punctuation, spaces, symbols and emoji.
_CONTENT = re.compile(r"[\W_]+")


class Classifier:
    """The rules, and, when trained (`Classifier.trained`), the statistical model that reads
    the text and the rules' findings together and decides."""

    model: TextModel | None = None
    # The stored version the model is (`feedback train`); None: trained from `folder`.
    model_version: int | None = None

    @classmethod
    def trained(
        cls,
        rulebook: RuleBook,
        folder: Path = TRAINING,
        registry: ModelRegistry | None = None,
    ) -> Classifier:
        """Rules plus the registry's active model when it has one made for this rule book
        and code, else the model trained on `folder` (rules alone when the rule book turns
        the model off or there is no training data)."""
        classifier = cls(rulebook)
        if rulebook.model.enabled:
            fingerprint = rulebook.model_dump_json().encode()
            stored = registry.active(fingerprint) if registry is not None else None
            if stored is not None:
                stored.model.rule_tokens = classifier.rule_tokens  # not stored: the live rules
                classifier.model, classifier.model_version = stored.model, stored.version
            else:
                classifier.model = trained(folder, classifier.rule_tokens, fingerprint)
        return classifier

    def __init__(self, rulebook: RuleBook) -> None:
        self.book = rulebook
        self._automaton = ahocorasick.Automaton()
        self._patterns: list[tuple[_RuleRef, re.Pattern[str]]] = []
        terms: dict[str, list[tuple[_RuleRef, str]]] = defaultdict(list)
        for ref, rule in self._all_rules():
            for term in rule.terms:
                terms[term.lower()].append((ref, term))
            for pattern in rule.patterns:
                self._patterns.append((ref, re.compile(pattern, re.IGNORECASE)))
        for key, refs in terms.items():
            # Only a term that begins or ends with an English letter or digit can run into
            # a neighbouring word: the others skip the boundary check.
            bounded = bool(key) and (_is_word_char(key[0]) or _is_word_char(key[-1]))
            self._automaton.add_word(key, (len(key), tuple(refs), bounded))
        self._automaton.make_automaton()
        # The window's last clause (after its last break) and any cue in it: one regex
        # each, not a Python loop per character and per cue (three calls a text).
        breaks = re.escape(rulebook.negation.clause_breaks)
        self._last_clause = re.compile(f"[^{breaks}]*\\Z") if breaks else re.compile(".*\\Z", re.S)
        self._cue = re.compile(
            "|".join(re.escape(c.lower()) for c in rulebook.negation.cues) or "(?!)"
        )
        self._exceptions = tuple(e.lower() for e in rulebook.negation.exceptions)
        self._contrast = tuple(m.lower() for m in rulebook.contrast_markers)
        self._sarcasm = tuple(m.lower() for m in rulebook.sarcasm_markers)

    def _all_rules(self) -> Iterable[tuple[_RuleRef, Rule]]:
        book = self.book
        for category in book.categories.values():
            for name, sub in category.subcategories.items():
                for i, rule in enumerate(sub.rules):
                    yield _RuleRef("sub", name, i, rule.weight, rule.negatable), rule
        groups: list[tuple[str, dict[Any, Any]]] = [
            ("type", book.types),
            ("emotion", book.emotions),
            ("flag", book.flags),
        ]
        for group, labelled in groups:
            for label, entry in labelled.items():
                for i, rule in enumerate(entry.rules):
                    yield _RuleRef(group, str(label), i, rule.weight, rule.negatable), rule
        for name, signal in book.priority.high_signals.items():
            yield (
                _RuleRef("signal", name, 0, 1.0, True),
                Rule(terms=signal.terms, patterns=signal.patterns),
            )

    # -- matching ---------------------------------------------------------------------

    def _negated(self, lowered: str, start: int) -> bool:
        window_start = max(0, start - self.book.negation.window_chars)
        clause = self._last_clause.search(lowered, window_start, start)
        window = clause.group() if clause else ""
        for exception in self._exceptions:
            window = window.replace(exception, " ")
        return self._cue.search(window) is not None

    def _match(self, text: str) -> dict[str, _Scores]:
        # Full-width letters and digits (ＡＰＰ, ２次) are the same words to the rules.
        text = unicodedata.normalize("NFKC", text)
        lowered = text.lower()
        contrast_at = min(
            (pos for pos in (lowered.find(m) for m in self._contrast) if pos >= 0),
            default=len(lowered) + 1,
        )
        best: dict[tuple[str, str, int], tuple[float, str]] = {}

        def hit(ref: _RuleRef, start: int, term: str) -> None:
            if ref.negatable and self._negated(lowered, start):
                return
            boost = self.book.contrast_boost if start > contrast_at else 1.0
            key = (ref.group, ref.label, ref.index)
            if key not in best or best[key][0] < ref.weight * boost:
                best[key] = (ref.weight * boost, term)

        for end, (length, refs, bounded) in self._automaton.iter(lowered):
            start = end - length + 1
            if bounded and not _on_word_boundaries(lowered, start, end):
                continue  # "issue" is not "sue", "leaking" not "leak"
            for ref, term in refs:
                hit(ref, start, term)
        for ref, pattern in self._patterns:
            found = pattern.search(text)
            if found:
                hit(ref, found.start(), found.group(0))
        groups: dict[str, _Scores] = defaultdict(_Scores)
        for (group, label, _), (score, term) in sorted(best.items()):
            groups[group].by_label[label] += score
            groups[group].fired.append(f"{group}.{label}:{term}")
        return groups

    # -- decisions --------------------------------------------------------------------

    def _confidence(self, ranked: list[tuple[str, float]]) -> float:
        if not ranked:
            return 0.0
        top = ranked[0][1]
        second = ranked[1][1] if len(ranked) > 1 else 0.0
        return (top / (top + second)) * min(1.0, top / self.book.confidence_saturation)

    def rule_tokens(self, text: str, tier: str) -> list[str]:
        """What the rules found, as tokens for the model (as trained: without history)."""
        return _tokens_of(self._by_rules(FeedbackText(text, customer_tier=tier), None))

    def classify(self, feedback: FeedbackText, history: History | None = None) -> Decision:
        plain = self._by_rules(feedback, None)
        # History changes the rules' decision only for a repeat complaint: decide again then.
        repeat = (
            history is not None
            and plain.type == FeedbackType.complaint
            and plain.category in history.recent_categories
        )
        ruled = self._by_rules(feedback, history) if repeat else plain
        if self.model is None:
            return ruled
        return self._with_model(self.model, feedback, history, ruled, _tokens_of(plain))

    def _with_model(
        self,
        model: TextModel,
        feedback: FeedbackText,
        history: History | None,
        ruled: Decision,
        rule_tokens: list[str],
    ) -> Decision:
        book = self.book
        tier = feedback.customer_tier
        # The rules already ran once for this text: their tokens are passed, not redone.
        tokens = features(feedback.text, tier) + rule_tokens
        found = model.predict(feedback.text, tier, tokens=tokens, explained=_EXPLAINED)
        category, _, subcategory = found["subcategory"].label.partition("/")
        feedback_type = FeedbackType(found["type"].label)
        priority = Priority(found["priority"].label)
        # The rules' adjustments (VIP, repeat) are theirs: the model's priority has learnt the
        # tier, and the repeat raise is applied below from the history.
        flags: set[Flag] = set(ruled.flags) - {"repeat"}
        ruled_rules = tuple(r for r in ruled.rules if not r.startswith("adjust."))
        rules = [
            f"model.{name}:{found[name].label} p={found[name].probability:.2f}"
            + (f" ({', '.join(found[name].because)})" if found[name].because else "")
            for name in ("type", "subcategory", "department", "priority")
        ]
        urgent = found["urgent_yes"]
        danger = found["danger"]
        if flags & set(book.priority.urgent_flags):
            priority = Priority.urgent  # a rule's danger flag stands
        elif urgent.probability >= book.model.urgent_threshold:
            priority = Priority.urgent
            flags |= {CONCEPT_FLAGS[c] for c in _concepts(tokens) if c in CONCEPT_FLAGS}
            if not flags & set(book.priority.urgent_flags) and danger.label != "none":
                flags.add(danger.label)  # type: ignore[arg-type]
            rules.append(
                f"model.urgent:p={urgent.probability:.2f} {danger.label} p={danger.probability:.2f}"
                + (f" ({', '.join(urgent.because)})" if urgent.because else "")
            )
        elif priority == Priority.urgent:
            # Urgent is the urgent score's decision (its threshold chosen by CV for recall),
            # not the priority model's: below the threshold the case is high.
            priority = Priority.high
        if tier == "vip":
            flags.add("vip")
        priority = _repeat_adjusted(history, category, feedback_type, priority, flags, rules)
        emotion = Emotion(found["emotion"].label)
        confidence = min(found["type"].probability, found["subcategory"].probability)
        silent = not any(r.startswith(("sub.", "type.")) for r in ruled_rules)
        vague = (  # the cheap tests first: few texts are silent and short
            silent
            and len(_CONTENT.sub("", feedback.text)) <= book.model.triage_when_vague_up_to_chars
            and not _concepts(tokens)
        )
        return Decision(
            type=feedback_type,
            category=category,
            subcategory=subcategory,
            priority=priority,
            department=found["department"].label,
            emotion=emotion,
            flags=tuple(sorted(flags)),
            confidence=confidence,
            rules=(*rules, *ruled_rules),
            needs_triage=priority != Priority.urgent
            and (
                vague
                or confidence
                < (book.model.triage_below_when_rules_silent if silent else book.model.triage_below)
            ),
            supervisor_attention=emotion == Emotion.angry,
            first_response_hours=book.priority.first_response_hours[priority],
        )

    def _by_rules(self, feedback: FeedbackText, history: History | None) -> Decision:
        book = self.book
        groups = self._match(feedback.text)
        rules: list[str] = []

        subs = groups["sub"].ranked()
        subcategory = subs[0][0] if subs else None
        category = book.category_of(subcategory) if subcategory else None
        category_score = subs[0][1] if subs else 0.0
        problem = category is not None and category not in PROBLEM_FREE_CATEGORIES

        types = groups["type"]
        flags: set[Flag] = set(groups["flag"].by_label)  # type: ignore[arg-type]
        if problem:
            # A described problem is itself evidence of a complaint, as strong as the problem.
            types.by_label[FeedbackType.complaint.value] += min(category_score, 3.0)
            types.fired.append("type.complaint:(a problem category matched)")
        if flags & set(book.priority.urgent_flags):
            types.by_label[FeedbackType.complaint.value] += 2.0
            types.fired.append("type.complaint:(a risk flag matched)")
        lowered = unicodedata.normalize("NFKC", feedback.text).lower()
        sarcastic = (problem or types.by_label.get(FeedbackType.complaint.value, 0) > 0) and any(
            marker in lowered for marker in self._sarcasm
        )
        if sarcastic:
            types.by_label.pop(FeedbackType.praise.value, None)
            groups["emotion"].by_label[Emotion.angry.value] += book.sarcasm_anger_weight
            groups["emotion"].fired.append("emotion.angry:(sarcasm)")
        type_ranked = types.ranked()
        feedback_type = FeedbackType(type_ranked[0][0]) if type_ranked else FeedbackType.inquiry
        type_confidence = self._confidence(type_ranked) if type_ranked else 0.2

        if category is None:
            category, subcategory = "other", "general"
            needs_category = feedback_type in (FeedbackType.complaint,)
            category_confidence = 0.2 if needs_category else 1.0
        else:
            category_confidence = self._confidence(subs)

        department = book.department_for(category, subcategory)
        general_types = (FeedbackType.inquiry, FeedbackType.help, FeedbackType.praise)
        if feedback_type in general_types and (
            category_score < book.plain_matter_min_score or category in PROBLEM_FREE_CATEGORIES
        ):
            department = book.general_department

        # In a fixed order: flags weighing the same emotions equally tie, and a set's order
        # (string hashes, seeded per process) made the emotion differ between processes.
        for flag in sorted(flags):
            felt = book.flag_emotions.get(flag)
            if felt is not None:
                groups["emotion"].by_label[felt.value] += book.flag_emotion_weight
        emotions = groups["emotion"].ranked()
        emotion = (
            Emotion(emotions[0][0])
            if emotions
            else book.default_emotion.get(feedback_type, Emotion.calm)
        )

        priority = book.priority.type_base.get(feedback_type, Priority.medium)
        signals = set(groups["signal"].by_label)
        if feedback_type in (FeedbackType.complaint, FeedbackType.help) and (
            signals or flags & set(book.priority.high_flags)
        ):
            priority = _at_least(priority, Priority.high)
        if flags & set(book.priority.urgent_flags):
            priority = Priority.urgent
        if feedback.customer_tier == "vip":
            flags.add("vip")
            if _rank(priority) < _rank(book.priority.vip_raises_up_to):
                priority = _raise(priority)
                rules.append("adjust.vip:+1")
        priority = _repeat_adjusted(history, category, feedback_type, priority, flags, rules)

        for group in ("type", "sub", "emotion", "flag", "signal"):
            rules.extend(groups[group].fired)
        confidence = min(type_confidence, category_confidence)
        return Decision(
            type=feedback_type,
            category=category,
            subcategory=subcategory,
            priority=priority,
            department=department,
            emotion=emotion,
            flags=tuple(sorted(flags)),
            confidence=confidence,
            rules=tuple(rules),
            needs_triage=confidence < book.confidence_threshold,
            supervisor_attention=emotion == Emotion.angry,
            first_response_hours=book.priority.first_response_hours[priority],
        )


def _is_word_char(character: str) -> bool:
    return character.isascii() and character.isalnum()


def _joined(a: str, b: str) -> bool:
    """Two characters of one English word: both letters or both digits ("wifi6" is the
    word "wifi" and the number 6; Chinese has no such boundary)."""
    if not (_is_word_char(a) and _is_word_char(b)):
        return False
    return a.isdigit() == b.isdigit()


def _on_word_boundaries(text: str, start: int, end: int) -> bool:
    """An English term matches whole words only: "issue" is not "sue", "leaking" not "leak"."""
    if start > 0 and _joined(text[start - 1], text[start]):
        return False
    return not (end + 1 < len(text) and _joined(text[end], text[end + 1]))


def _repeat_adjusted(
    history: History | None,
    category: str | None,
    feedback_type: FeedbackType,
    priority: Priority,
    flags: set[Flag],
    rules: list[str],
) -> Priority:
    """A complaint in a category the customer complained of within the repeat window is
    a repeat: flagged, one priority up."""
    if (
        history
        and category in history.recent_categories
        and feedback_type == FeedbackType.complaint
    ):
        flags.add("repeat")
        rules.append(f"adjust.repeat:{category}+1")
        return _raise(priority)
    return priority


def _concepts(tokens: list[str]) -> set[str]:
    """The lexicon's concepts among a text's model tokens (a pair token implies its single
    ones). Asked only by urgent texts and short silent ones: for every text it would cost
    ~4 µs."""
    return {t.removeprefix("lex:") for t in tokens if t.startswith("lex:")}


def _tokens_of(decision: Decision) -> list[str]:
    """What the rules decided, as tokens for the model."""
    tokens = [
        f"r.type:{decision.type.value}",
        f"r.sub:{decision.subcategory}",
        f"r.dept:{decision.department}",
        f"r.prio:{decision.priority.value}",
        f"r.emotion:{decision.emotion.value}",
    ]
    tokens += [f"r.flag:{flag}" for flag in decision.flags]
    tokens += sorted({f"r.{rule.partition(':')[0]}" for rule in decision.rules})
    return tokens


def _rank(priority: Priority) -> int:
    return PRIORITY_ORDER.index(priority)


def _raise(priority: Priority) -> Priority:
    return PRIORITY_ORDER[min(_rank(priority) + 1, len(PRIORITY_ORDER) - 1)]


def _at_least(priority: Priority, floor: Priority) -> Priority:
    return priority if _rank(priority) >= _rank(floor) else floor
