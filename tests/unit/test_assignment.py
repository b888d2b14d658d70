from __future__ import annotations

from services.routing.assignment import Agent, Need, choose_owner, language_of


def agent(agent_id: str, **changes) -> Agent:
    fields = {
        "agent_id": f"agent-{agent_id}",
        "name": agent_id,
        "department": "tech",
        "languages": ("zh", "en"),
        "capacity": 4,
    }
    fields.update(changes)
    return Agent(**fields)


NEED = Need(department="tech", category="product_function", language="zh", vip=False, weight=1.0)


def test_least_loaded_capable_agent_wins() -> None:
    agents = [agent("a"), agent("b"), agent("c")]
    assert (
        choose_owner(NEED, agents, {"agent-a": 2, "agent-b": 1, "agent-c": 3}).agent_id == "agent-b"
    )


def test_nobody_over_capacity() -> None:
    assert choose_owner(NEED, [agent("a", capacity=2)], {"agent-a": 1.5}) is None


def test_skills_language_vip_department_and_availability_matter() -> None:
    assert choose_owner(NEED, [agent("a", skills=("billing",))], {}) is None
    assert (
        choose_owner(Need("tech", None, "en", False, 1), [agent("a", languages=("zh",))], {})
        is None
    )
    assert choose_owner(Need("tech", None, "zh", True, 1), [agent("a", vip=False)], {}) is None
    assert choose_owner(NEED, [agent("a", department="finance")], {}) is None
    assert choose_owner(NEED, [agent("a", available=False)], {}) is None


def test_language_of_text() -> None:
    assert language_of("The app keeps crashing") == "en"
    assert language_of("APP一打开就闪退") == "zh"
