"""Choosing the owner: the available agent of the department with the right skills and
the least open weighted work; nobody over capacity; urgent and high first."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field

from contracts.codes import Priority

DEFAULT_AGENTS = Path(__file__).resolve().parents[2] / "config" / "agents.yaml"
PRIORITY_RANK: dict[str, int] = {"urgent": 3, "high": 2, "medium": 1, "low": 0}
AgentId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{1,63}$")]


class Agent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: AgentId
    name: Annotated[str, Field(min_length=1, max_length=100)]
    department: Annotated[str, Field(pattern=r"^[a-z][a-z_]{1,40}$")]
    skills: tuple[str, ...] = ()
    languages: tuple[str, ...] = ("zh",)
    vip: bool = False
    capacity: Annotated[float, Field(ge=0, le=1000)] = 10
    available: bool = True


class AgentRoster(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload_weights: dict[Priority, float]
    agents: tuple[Agent, ...]


def load_roster(path: Path | None = None) -> AgentRoster:
    chosen = path or Path(os.environ.get("FEEDBACK_AGENTS") or DEFAULT_AGENTS)
    with open(chosen, encoding="utf-8") as handle:
        return AgentRoster.model_validate(yaml.safe_load(handle))


@dataclass(frozen=True)
class Need:
    """What a case asks of its owner."""

    department: str
    category: str | None
    language: str
    vip: bool
    weight: float


def language_of(text: str) -> str:
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return "zh"
    ascii_share = sum(ch.isascii() for ch in letters) / len(letters)
    return "en" if ascii_share > 0.8 else "zh"


def can_take(agent: Agent, need: Need, load: float) -> bool:
    return (
        agent.available
        and agent.department == need.department
        and (not agent.skills or need.category in agent.skills)
        and need.language in agent.languages
        and (agent.vip or not need.vip)
        and load + need.weight <= agent.capacity
    )


def choose_owner(need: Need, agents: Iterable[Agent], loads: Mapping[str, float]) -> Agent | None:
    """The least-loaded agent who can take the case, or None (it waits in the queue)."""
    eligible = [a for a in agents if can_take(a, need, loads.get(a.agent_id, 0.0))]
    if not eligible:
        return None
    return min(eligible, key=lambda a: (loads.get(a.agent_id, 0.0), a.agent_id))
