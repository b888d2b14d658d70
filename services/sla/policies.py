"""Deadline policies (`config/sla.yaml`): which clock a case gets, with which target.

Rules per clock are tried in order; the first whose `when` matches the case decides. A bad
file is refused at start with the key and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.sla.calendar import Target, parse_target

POLICY_FILE = Path(__file__).resolve().parents[2] / "config" / "sla.yaml"
CLOCKS = (
    "registration",
    "first_response",
    "progress_update",
    "co_handler_response",
    "resolution",
    "result_notice",
)


class PolicyError(ValueError):
    pass


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    when: dict[str, Any] = {}
    target: str
    time: Literal["business", "calendar"] = "business"

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        parse_target(value)  # raises with the reason
        return value

    @field_validator("when")
    @classmethod
    def _conditions(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = {"priority", "type", "channel", "category", "customer_tier", "complex"}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown conditions {sorted(unknown)}; use {sorted(known)}")
        return value

    def matches(self, facts: dict[str, Any]) -> bool:
        for name, wanted in self.when.items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if facts.get(name) not in allowed:
                return False
        return True

    @property
    def parsed(self) -> Target:
        return parse_target(self.target)


class Escalation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_head_after: Rule = Rule(target="4h")


class Policies(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warn_at_share: float = Field(default=0.75, gt=0, lt=1)
    clocks: dict[str, list[Rule]]
    escalation: Escalation = Escalation()

    @field_validator("clocks")
    @classmethod
    def _known_clocks(cls, value: dict[str, list[Rule]]) -> dict[str, list[Rule]]:
        unknown = set(value) - set(CLOCKS)
        if unknown:
            raise ValueError(f"unknown clocks {sorted(unknown)}; use {list(CLOCKS)}")
        return value

    def rule_for(self, clock: str, facts: dict[str, Any]) -> Rule | None:
        """The rule that decides this clock for a case with these facts, if any."""
        return next((rule for rule in self.clocks.get(clock, []) if rule.matches(facts)), None)


def load_policies(path: Path | None = None) -> Policies:
    source = path or POLICY_FILE
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise PolicyError(f"{source}: {error}") from error
    try:
        return Policies.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        line = _line_of(source, first["loc"])
        raise PolicyError(
            f"{source}{f':{line}' if line else ''}: {where}: {first['msg']}"
        ) from error


def _line_of(source: Path, location: tuple[Any, ...]) -> int | None:
    """The line of the first key named in the error's location, for the operator."""
    names = [str(p) for p in location if isinstance(p, str)]
    if not names:
        return None
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for wanted in reversed(names):
        for number, text in enumerate(lines, start=1):
            if text.strip().startswith(f"{wanted}:") or f"{wanted}:" in text:
                return number
    return None
