"""The rule book: `config/classification.yaml` validated into typed models."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.codes import Emotion, FeedbackType, Priority

DEFAULT_RULES = Path(__file__).resolve().parents[3] / "config" / "classification.yaml"
Flag = Literal[
    "safety",
    "property",
    "business_outage",
    "public_opinion",
    "fraud",
    "data_leak",
    "wide_impact",
    "repeat",
    "vip",
]
URGENT_FLAGS: tuple[Flag, ...] = (
    "safety",
    "property",
    "business_outage",
    "public_opinion",
    "fraud",
    "data_leak",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(Strict):
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    weight: float = Field(default=1.0, gt=0)
    negatable: bool = True

    @model_validator(mode="after")
    def _has_something(self) -> Rule:
        if not self.terms and not self.patterns:
            raise ValueError("a rule needs terms or patterns")
        for pattern in self.patterns:
            re.compile(pattern)
        return self


class Subcategory(Strict):
    label: str
    department: str | None = None
    rules: tuple[Rule, ...] = ()


class Category(Strict):
    label: str
    department: str
    subcategories: dict[str, Subcategory]


class Labelled(Strict):
    label: str = ""
    rules: tuple[Rule, ...]


class Negation(Strict):
    cues: tuple[str, ...]
    window_chars: int = Field(default=5, ge=1, le=20)
    exceptions: tuple[str, ...] = ()
    clause_breaks: str = "，。！？；,.!?;\n"


class Signal(Strict):
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


class PriorityRules(Strict):
    first_response_hours: dict[Priority, float]
    type_base: dict[FeedbackType, Priority]
    urgent_flags: tuple[Flag, ...] = URGENT_FLAGS
    high_flags: tuple[Flag, ...] = ("wide_impact",)
    high_signals: dict[str, Signal] = {}
    vip_raises_up_to: Priority = Priority.high
    repeat_window_days: int = Field(default=30, ge=1)


class ModelSettings(Strict):
    """How the statistical model (model.py) joins the rules."""

    enabled: bool = True
    # The urgent score (model.py: the mean of P(urgent) and the likeliest danger kind's P)
    # at or above this makes a case urgent: chosen on the training set by cross-validation
    # for recall first (a missed danger costs far more than a false alarm).
    urgent_threshold: float = Field(default=0.3, gt=0, lt=1)
    # Below this probability for type or subcategory, a person triages.
    triage_below: float = Field(default=0.15, ge=0, le=1)
    # ... and below this when no rule recognised anything in the text either (a text with
    # nothing to go on, "关于上次那个事情", must reach a person, not the commonest label).
    triage_below_when_rules_silent: float = Field(default=0.3, ge=0, le=1)
    # A message this short (letters, digits and CJK characters) that no rule and no lexicon
    # concept recognises names no matter ("关于上次那个事情"): a person reads it, however
    # sure the model is of a guess made from a few common words.
    triage_when_vague_up_to_chars: int = Field(default=10, ge=0)


class RuleBook(Strict):
    version: int
    model: ModelSettings = ModelSettings()
    confidence_threshold: float = Field(ge=0, le=1)
    confidence_saturation: float = Field(gt=0)
    plain_matter_min_score: float = Field(ge=0)
    contrast_boost: float = Field(default=1.5, ge=1)
    negation: Negation
    contrast_markers: tuple[str, ...] = ()
    sarcasm_markers: tuple[str, ...] = ()
    sarcasm_anger_weight: float = 2.0
    default_emotion: dict[FeedbackType, Emotion] = {}
    flag_emotions: dict[Flag, Emotion] = {}
    flag_emotion_weight: float = 1.0
    departments: dict[str, str]
    general_department: str
    mandatory_information: dict[str, tuple[str, ...]] = {}
    categories: dict[str, Category]
    types: dict[FeedbackType, Labelled]
    emotions: dict[Emotion, Labelled]
    flags: dict[Flag, Labelled]
    priority: PriorityRules

    @model_validator(mode="after")
    def _departments_exist(self) -> RuleBook:
        known = set(self.departments)
        used = {self.general_department}
        for category in self.categories.values():
            used.add(category.department)
            used.update(s.department for s in category.subcategories.values() if s.department)
        unknown = used - known
        if unknown:
            raise ValueError(f"rules name departments that are not configured: {sorted(unknown)}")
        return self

    def department_for(self, category: str, subcategory: str | None) -> str:
        group = self.categories[category]
        if subcategory and group.subcategories[subcategory].department:
            return str(group.subcategories[subcategory].department)
        return group.department

    def category_of(self, subcategory: str) -> str:
        for name, category in self.categories.items():
            if subcategory in category.subcategories:
                return name
        raise KeyError(subcategory)


def load_rulebook(path: Path | None = None) -> RuleBook:
    """Load the rule book from `path`, `FEEDBACK_CLASSIFIER_RULES`, or the default file."""
    chosen = path or Path(os.environ.get("FEEDBACK_CLASSIFIER_RULES") or DEFAULT_RULES)
    with open(chosen, encoding="utf-8") as handle:
        return RuleBook.model_validate(yaml.safe_load(handle))
