"""Assignment under load against the real worklist: 1,000 cases, 20 agents."""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from psycopg_pool import ConnectionPool

from services.common.database import apply_schema
from services.common.settings import Settings
from services.routing.assignment import PRIORITY_RANK, Agent
from services.routing.worklist import SCHEMA, CaseRow, Worklist

pytestmark = pytest.mark.integration
WEIGHTS = {"urgent": 4.0, "high": 2.0, "medium": 1.0, "low": 0.5}


def test_thousand_cases_twenty_agents_fair_and_within_capacity(settings: Settings) -> None:
    apply_schema(settings.database_url, SCHEMA)
    rng = random.Random(42)
    with ConnectionPool(settings.database_url, kwargs={"autocommit": True}) as pool:
        worklist = Worklist(pool)
        agents = [
            Agent(
                agent_id=f"agent-{i:02d}",
                name=f"坐席{i}",
                department="customer_service",
                languages=("zh", "en") if i % 4 == 0 else ("zh",),
                vip=i % 5 == 0,
                capacity=40 if i % 2 else 60,
                available=i != 19,  # one agent is away
            )
            for i in range(20)
        ]
        for agent in agents:
            worklist.upsert_agent(agent)
        start = datetime(2026, 11, 1, tzinfo=UTC)
        rows = []
        for n in range(1000):
            priority = rng.choices(["urgent", "high", "medium", "low"], weights=[5, 15, 60, 20])[0]
            rows.append(
                CaseRow(
                    feedback_id=uuid.uuid4(),
                    feedback_number=f"F20261101-{n + 1:04d}",
                    customer_ref=f"客户-2026-{n + 1:04d}",
                    category="service_experience",
                    department="customer_service",
                    priority=priority,
                    weight=WEIGHTS[priority],
                    language="en" if n % 10 == 0 else "zh",
                    vip=n % 20 == 0,
                    registered_at=start + timedelta(seconds=n),
                    state="queued",
                )
            )
        worklist.enter(rows)
        assignments = worklist.drain(["customer_service"])

        by_id = {r.feedback_id: r for r in rows}
        agent_by_id = {a.agent_id: a for a in agents}
        load: dict[str, float] = defaultdict(float)
        for assignment in assignments:
            case = by_id[assignment.feedback_id]
            agent = agent_by_id[assignment.owner]
            load[agent.agent_id] += case.weight
            assert agent.available
            assert case.language in agent.languages
            assert agent.vip or not case.vip
        # Nobody over capacity, and capacity is actually used (the queue is larger than it).
        total_capacity = sum(a.capacity for a in agents if a.available)
        assert all(load[a] <= agent_by_id[a].capacity for a in load)
        assert sum(load.values()) >= 0.9 * total_capacity
        assert "agent-19" not in load
        # Urgent and high first: no urgent case waits while a lower one was assigned.
        assigned_ids = {a.feedback_id for a in assignments}
        waiting = [r for r in rows if r.feedback_id not in assigned_ids]
        assigned_ranks = [PRIORITY_RANK[by_id[i].priority] for i in assigned_ids]
        urgent_waiting = [r for r in waiting if r.priority == "urgent"]
        assert not urgent_waiting or min(assigned_ranks) >= PRIORITY_RANK["urgent"]
        assert Counter(by_id[i].priority for i in assigned_ids)["urgent"] == sum(
            1 for r in rows if r.priority == "urgent"
        )
        # Fair: agents of equal capacity end within one case's weight of each other.
        for capacity in (40, 60):
            peers = [load[a.agent_id] for a in agents if a.available and a.capacity == capacity]
            assert max(peers) - min(peers) <= 4.0
        # The rest wait in the queue, in priority order, and are taken as capacity frees.
        queue = worklist.queue("customer_service", "queued")
        assert len(queue) == len(waiting)
        ranks = [PRIORITY_RANK[r.priority] for r in queue]
        assert ranks == sorted(ranks, reverse=True)
        worklist.upsert_agent(agents[19].model_copy(update={"available": True}))
        more = worklist.drain(["customer_service"])
        assert more and {a.owner for a in more} == {"agent-19"}
