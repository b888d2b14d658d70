"""The routing worklist (PostgreSQL): each case's routing state, and the agents.

It answers what the Case stream cannot answer quickly: a customer's recent categories
(repeat complaints), each agent's open weighted work, and the department queues. Writes
are keyed by feedback id, so repeating them after a crash changes nothing; an owner
chosen here is "announced" once the Case has recorded it, and `unannounced()` finds the
rest so they can be recorded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from services.access import audit
from services.routing.assignment import PRIORITY_RANK, Agent, AgentRoster, Need, choose_owner

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS routing_agents (
        agent_id text PRIMARY KEY,
        name text NOT NULL,
        department text NOT NULL,
        skills text[] NOT NULL DEFAULT '{}',
        languages text[] NOT NULL DEFAULT '{zh}',
        vip boolean NOT NULL DEFAULT false,
        capacity double precision NOT NULL,
        available boolean NOT NULL DEFAULT true,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS routing_cases (
        feedback_id uuid PRIMARY KEY,
        feedback_number text NOT NULL UNIQUE,
        customer_ref text NOT NULL,
        category text,
        department text,
        priority text NOT NULL,
        priority_rank integer NOT NULL,
        weight double precision NOT NULL,
        language text NOT NULL,
        vip boolean NOT NULL,
        registered_at timestamptz NOT NULL,
        state text NOT NULL,
        owner text,
        owner_announced boolean NOT NULL DEFAULT false,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX IF NOT EXISTS routing_cases_customer ON routing_cases (customer_ref, registered_at)",
    "CREATE INDEX IF NOT EXISTS routing_cases_queue ON routing_cases "
    "(department, state, priority_rank DESC, registered_at)",
    "CREATE INDEX IF NOT EXISTS routing_cases_owner ON routing_cases (owner) WHERE state = 'owned'",
]

# triage: a person must classify; queued: waits for an owner; owned: has one;
# disputed: the owner refused, the supervisor reassigns.
STATES = ("triage", "queued", "owned", "disputed", "pending_info")


@dataclass(frozen=True)
class CaseRow:
    feedback_id: UUID
    feedback_number: str
    customer_ref: str
    category: str | None
    department: str | None
    priority: str
    weight: float
    language: str
    vip: bool
    registered_at: datetime
    state: str
    owner: str | None = None


@dataclass(frozen=True)
class Assignment:
    feedback_id: UUID
    feedback_number: str
    owner: str
    reason: str


class Worklist:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    @contextmanager
    def _transaction(self, conn: Any = None) -> Iterator[Any]:
        """The caller's transaction when it passes its connection (routing's new cases
        commit with their events), else one of our own."""
        if conn is not None:
            yield conn
            return
        with self.pool.connection() as own, own.transaction():
            yield own

    # -- agents -----------------------------------------------------------------------

    def seed(self, roster: AgentRoster) -> None:
        """Load the configured agents when the table is empty (first start)."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("LOCK TABLE routing_agents IN EXCLUSIVE MODE")
            row = conn.execute("SELECT count(*) FROM routing_agents").fetchone()
            if row and row[0]:
                return
            for agent in roster.agents:
                self._upsert(conn, agent)

    def upsert_agent(self, agent: Agent, changed_by: str | None = None) -> None:
        """Add or change an agent; with `changed_by`, the admin change log records it in
        the same transaction."""
        with self.pool.connection() as conn, conn.transaction():
            self._upsert(conn, agent)
            if changed_by is not None:
                audit.record_change_sync(
                    conn, changed_by, "agent", agent.agent_id, agent.model_dump(mode="json")
                )

    def _upsert(self, conn: Any, agent: Agent) -> None:
        conn.execute(
            """
            INSERT INTO routing_agents (agent_id, name, department, skills, languages, vip,
                                        capacity, available, updated_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())
            ON CONFLICT (agent_id) DO UPDATE SET name = EXCLUDED.name,
                department = EXCLUDED.department, skills = EXCLUDED.skills,
                languages = EXCLUDED.languages, vip = EXCLUDED.vip,
                capacity = EXCLUDED.capacity, available = EXCLUDED.available, updated_at = now()
            """,
            (
                agent.agent_id, agent.name, agent.department, list(agent.skills),
                list(agent.languages), agent.vip, agent.capacity, agent.available,
            ),
        )  # fmt: skip

    def agents(self, department: str | None = None) -> list[tuple[Agent, float]]:
        """Agents with their open weighted work."""
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                """
                SELECT a.*, coalesce(sum(c.weight), 0) AS load
                FROM routing_agents a
                LEFT JOIN routing_cases c ON c.owner = a.agent_id AND c.state = 'owned'
                WHERE %(department)s::text IS NULL OR a.department = %(department)s
                GROUP BY a.agent_id ORDER BY a.department, a.agent_id
                """,
                {"department": department},
            )
            return [(_agent(row), float(row["load"])) for row in cursor.fetchall()]

    def agent(self, agent_id: str) -> Agent | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute("SELECT * FROM routing_agents WHERE agent_id = %s", (agent_id,))
            row = cursor.fetchone()
        return _agent(row) if row else None

    # -- cases ------------------------------------------------------------------------

    def recent_categories(
        self, customer_refs: Iterable[str], since: datetime, exclude: Iterable[UUID]
    ) -> dict[str, set[str]]:
        refs = sorted(set(customer_refs))
        found: dict[str, set[str]] = defaultdict(set)
        if not refs:
            return found
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT customer_ref, category FROM routing_cases WHERE customer_ref = ANY(%s) "
                "AND registered_at >= %s AND category IS NOT NULL AND NOT feedback_id = ANY(%s)",
                (refs, since, list(exclude)),
            ).fetchall()
        for customer_ref, category in rows:
            found[customer_ref].add(category)
        return found

    def enter(self, rows: Sequence[CaseRow], conn: Any = None) -> dict[UUID, CaseRow]:
        """Record new cases (once); return what is on record for each, new or earlier."""
        if not rows:
            return {}
        with self._transaction(conn) as conn:
            with conn.cursor() as cursor:
                cursor.executemany(
                    """
                    INSERT INTO routing_cases (feedback_id, feedback_number, customer_ref,
                        category, department, priority, priority_rank, weight, language, vip,
                        registered_at, state, owner)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (feedback_id) DO NOTHING
                    """,
                    [
                        (
                            r.feedback_id, r.feedback_number, r.customer_ref, r.category,
                            r.department, r.priority, PRIORITY_RANK[r.priority], r.weight,
                            r.language, r.vip, r.registered_at, r.state, r.owner,
                        )
                        for r in rows
                    ],
                )  # fmt: skip
            return self._rows(conn, [r.feedback_id for r in rows])

    def find(self, feedback_number: str) -> CaseRow | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                f"SELECT {_ROW_COLUMNS} FROM routing_cases WHERE feedback_number = %s",
                (feedback_number,),
            )
            row = cursor.fetchone()
        return CaseRow(**row) if row else None

    def _rows(self, conn: Any, ids: list[UUID]) -> dict[UUID, CaseRow]:
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                f"SELECT {_ROW_COLUMNS} FROM routing_cases WHERE feedback_id = ANY(%s)", (ids,)
            )
            return {row["feedback_id"]: CaseRow(**row) for row in cursor.fetchall()}

    def drain(self, departments: Iterable[str], conn: Any = None) -> list[Assignment]:
        """Give queued cases of these departments to free agents: urgent and high first,
        then oldest; the least-loaded capable agent each time; nobody over capacity."""
        chosen: list[Assignment] = []
        # One transaction for all of them; departments in a fixed order so two instances
        # lock agents in the same order and never deadlock.
        with self._transaction(conn) as conn:
            for department in sorted(set(departments)):
                chosen += self._drain_department(conn, department)
        return chosen

    def _drain_department(self, conn: Any, department: str) -> list[Assignment]:
        with conn.cursor(row_factory=dict_row) as cursor:
            # Locking the department's agents serialises assignment across instances.
            cursor.execute(
                "SELECT * FROM routing_agents WHERE department = %s ORDER BY agent_id FOR UPDATE",
                (department,),
            )
            agents = [_agent(row) for row in cursor.fetchall()]
            if not agents:
                return []
            cursor.execute(
                "SELECT owner, sum(weight) AS load FROM routing_cases "
                "WHERE state = 'owned' AND owner = ANY(%s) GROUP BY owner",
                ([a.agent_id for a in agents],),
            )
            loads = {row["owner"]: float(row["load"]) for row in cursor.fetchall()}
            # Look only as deep into the queue as the free capacity could possibly take:
            # a long queue behind busy agents must not be scanned on every drain.
            free = sum(
                max(0.0, a.capacity - loads.get(a.agent_id, 0.0)) for a in agents if a.available
            )
            depth = int(free / _SMALLEST_WEIGHT) + 1
            if free < _SMALLEST_WEIGHT:
                return []
            cursor.execute(
                f"SELECT {_ROW_COLUMNS} FROM routing_cases WHERE department = %s AND state = 'queued' "
                "ORDER BY priority_rank DESC, registered_at, feedback_number "
                "LIMIT %s FOR UPDATE SKIP LOCKED",
                (department, depth),
            )
            queued = [CaseRow(**row) for row in cursor.fetchall()]
        chosen = []
        for case in queued:
            need = Need(department, case.category, case.language, case.vip, case.weight)
            agent = choose_owner(need, agents, loads)
            if agent is None:
                continue  # a smaller case further down may still fit someone
            load = loads.get(agent.agent_id, 0.0)
            loads[agent.agent_id] = load + case.weight
            conn.execute(
                "UPDATE routing_cases SET state = 'owned', owner = %s, owner_announced = false, "
                "updated_at = now() WHERE feedback_id = %s",
                (agent.agent_id, case.feedback_id),
            )
            chosen.append(
                Assignment(
                    case.feedback_id,
                    case.feedback_number,
                    agent.agent_id,
                    f"least open work in {department}: {agent.agent_id} "
                    f"({load:g}+{case.weight:g} of {agent.capacity:g})",
                )
            )
        return chosen

    def unannounced(self, limit: int = 500) -> list[Assignment]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT feedback_id, feedback_number, owner FROM routing_cases "
                "WHERE state = 'owned' AND NOT owner_announced ORDER BY updated_at LIMIT %s",
                (limit,),
            ).fetchall()
        return [Assignment(r[0], r[1], r[2], "assignment recorded after a restart") for r in rows]

    def mark_announced(self, feedback_ids: Iterable[UUID], conn: Any = None) -> None:
        ids = list(feedback_ids)
        if ids:
            with self._transaction(conn) as conn:
                conn.execute(
                    "UPDATE routing_cases SET owner_announced = true WHERE feedback_id = ANY(%s)",
                    (ids,),
                )

    def set_owner(self, feedback_id: UUID, owner: str, weight_check: Agent) -> bool:
        """A supervisor's assignment; refused (False) when it would exceed capacity."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT 1 FROM routing_agents WHERE agent_id = %s FOR UPDATE", (owner,))
            row = conn.execute(
                "SELECT coalesce(sum(weight), 0) FROM routing_cases WHERE state = 'owned' "
                "AND owner = %s AND feedback_id <> %s",
                (owner, feedback_id),
            ).fetchone()
            weight = conn.execute(
                "SELECT weight FROM routing_cases WHERE feedback_id = %s", (feedback_id,)
            ).fetchone()
            if (
                row is None
                or weight is None
                or float(row[0]) + float(weight[0]) > weight_check.capacity
            ):
                return False
            conn.execute(
                "UPDATE routing_cases SET state = 'owned', owner = %s, owner_announced = false, "
                "updated_at = now() WHERE feedback_id = %s",
                (owner, feedback_id),
            )
            return True

    def set_state(self, feedback_id: UUID, state: str, **changes: Any) -> None:
        assert state in STATES
        assert set(changes) <= _CHANGEABLE, set(changes) - _CHANGEABLE
        assignments = ", ".join(f"{column} = %({column})s" for column in changes)
        extra = f", {assignments}" if assignments else ""
        with self.pool.connection() as conn:
            conn.execute(
                f"UPDATE routing_cases SET state = %(state)s{extra}, updated_at = now() "
                "WHERE feedback_id = %(feedback_id)s",
                {"state": state, "feedback_id": feedback_id, **changes},
            )

    def queue(self, department: str | None, state: str) -> list[CaseRow]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                f"SELECT {_ROW_COLUMNS} FROM routing_cases WHERE state = %s "
                "AND (%s::text IS NULL OR department = %s) "
                "ORDER BY priority_rank DESC, registered_at LIMIT 1000",
                (state, department, department),
            )
            return [CaseRow(**row) for row in cursor.fetchall()]


_SMALLEST_WEIGHT = 0.25  # no priority weighs less (config/agents.yaml workload_weights)
_CHANGEABLE = {"department", "category", "priority", "priority_rank", "weight", "owner"}
_ROW_COLUMNS = (
    "feedback_id, feedback_number, customer_ref, category, department, priority, weight, "
    "language, vip, registered_at, state, owner"
)


def _agent(row: dict[str, Any]) -> Agent:
    return Agent(
        agent_id=row["agent_id"],
        name=row["name"],
        department=row["department"],
        skills=tuple(row["skills"]),
        languages=tuple(row["languages"]),
        vip=row["vip"],
        capacity=row["capacity"],
        available=row["available"],
    )
