"""Transparent rule-based classification: type, category, priority, department, emotion,
risk flags, with the rules that fired and a confidence."""

from services.routing.classifier.engine import Classifier, Decision, FeedbackText, History
from services.routing.classifier.rules import RuleBook, load_rulebook

__all__ = ["Classifier", "Decision", "FeedbackText", "History", "RuleBook", "load_rulebook"]
