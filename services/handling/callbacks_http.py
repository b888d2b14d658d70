"""Callbacks over HTTP: the worklist and the attempts (回访记录).

`GET /v1/callbacks` lists tasks due first (by default the ones still to do: open and
rescheduled); a task belongs to its case's department, and agents, supervisors and heads see
their departments' tasks (tasks without a department: the triage department's supervisors and
heads), quality all.

`POST /v1/callbacks/{task_id}/attempts` records one attempt. Reached with an outcome: the
task is done. `not_convenient` (不方便): `reschedule_to` is required and the task is due then.
Not reached: the attempt is counted, and `reschedule_to` may set the next try. A problem the
customer raises is registered as new feedback with `POST /v1/channels/callback`
(`related_feedback` = the task's feedback number, `callback_id` = the task id); the attempt
may carry the number it got (`new_feedback_number`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from contracts.codes import Emotion
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.access.http import require
from services.access.roles import TRIAGE_DEPARTMENT, Actor, Role, visible_departments
from services.common.boundary import Checked
from services.common.masking import mask_contacts
from services.handling.callbacks import TaskState, TaskType

# Outcomes that mean "call again at the time the customer chose".
NOT_CONVENIENT = frozenset({"not_convenient", "不方便"})
Text = Annotated[str, Field(min_length=1, max_length=5000)]


class AttemptIn(Checked):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reached: bool
    outcome: Annotated[str, Field(min_length=1, max_length=500)]
    customer_words: Text | None = None
    expectation: Text | None = None
    emotion: Emotion | None = None
    satisfaction: Annotated[int, Field(ge=1, le=5)] | None = None
    reschedule_to: AwareDatetime | None = None
    new_feedback_number: Annotated[str, Field(pattern=FEEDBACK_NUMBER_PATTERN)] | None = None

    promises = frozenset({"reschedule_to"})

    @model_validator(mode="after")
    def _reschedule(self) -> AttemptIn:
        if self.outcome in NOT_CONVENIENT and self.reschedule_to is None:
            raise ValueError("reschedule_to is required when the customer is not available")
        if self.reschedule_to is not None and self.reschedule_to <= datetime.now(UTC):
            raise ValueError("reschedule_to must lie ahead")
        return self


class CallbackTask(BaseModel):
    id: UUID
    type: TaskType
    feedback_number: str | None
    customer_ref: str
    department: str | None
    goal: str
    script: str
    priority: bool
    window_from: datetime | None
    due_at: datetime
    state: TaskState
    attempts: int
    outcome: str | None
    satisfaction: int | None
    new_feedback_number: str | None
    created_at: datetime
    updated_at: datetime
    done_at: datetime | None
    overdue_level: int = Field(
        0, description="1: the supervisor was told it is overdue; 2: the head"
    )
    overdue_at: datetime | None = None


COLUMNS = (
    "id, type, feedback_number, customer_ref, department, goal, script, priority, window_from, "
    "due_at, state, attempts, outcome, satisfaction, new_feedback_number, created_at, "
    "updated_at, done_at, overdue_level, overdue_at"
)


def _scope(actor: Actor) -> tuple[str, dict[str, Any]]:
    """The SQL condition of the tasks this actor sees."""
    departments = visible_departments(actor)
    if departments is None:
        return "TRUE", {}
    triage = actor.role in (Role.supervisor, Role.head) and TRIAGE_DEPARTMENT in departments
    return (
        "(department = ANY(%(departments)s) OR (department IS NULL AND %(triage)s))",
        {"departments": list(departments), "triage": triage},
    )


def callbacks_router(pool: AsyncConnectionPool) -> APIRouter:
    router = APIRouter(tags=["callbacks"])

    @router.get("/v1/callbacks", response_model=list[CallbackTask])
    async def worklist(
        actor: Annotated[Actor, require("callback.read")],
        state: Annotated[
            TaskState | None, Query(description="default: open and rescheduled")
        ] = None,
        type: Annotated[TaskType | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[CallbackTask]:
        """Tasks due first (a priority task before another due at the same time)."""
        condition, params = _scope(actor)
        conditions = [condition]
        if state is None:
            conditions.append("state <> 'done'")
        else:
            conditions.append("state = %(state)s")
            params["state"] = state.value
        if type is not None:
            conditions.append("type = %(type)s")
            params["type"] = type.value
        params["limit"] = limit
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                f"SELECT {COLUMNS} FROM callback_tasks WHERE {' AND '.join(conditions)} "
                "ORDER BY due_at, priority DESC, id LIMIT %(limit)s",
                params,
            )
            return [CallbackTask.model_validate(row) for row in await cursor.fetchall()]

    async def visible(cursor: Any, actor: Actor, task_id: UUID, lock: bool) -> dict[str, Any]:
        await cursor.execute(
            f"SELECT {COLUMNS} FROM callback_tasks WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (task_id,),
        )
        row: dict[str, Any] | None = await cursor.fetchone()
        if row is None:
            raise HTTPException(404, detail=f"no callback task {task_id}")
        condition, params = _scope(actor)
        if condition != "TRUE":
            departments = params["departments"]
            seen = row["department"] in departments or (
                row["department"] is None and params["triage"]
            )
            if not seen:
                raise HTTPException(403, detail=f"callback task {task_id} is another department's")
        return row

    @router.get("/v1/callbacks/{task_id}", response_model=CallbackTask)
    async def task(
        task_id: UUID, actor: Annotated[Actor, require("callback.read")]
    ) -> CallbackTask:
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            return CallbackTask.model_validate(await visible(cursor, actor, task_id, False))

    @router.post("/v1/callbacks/{task_id}/attempts", response_model=CallbackTask)
    async def attempt(
        task_id: UUID, body: AttemptIn, actor: Annotated[Actor, require("callback.record")]
    ) -> CallbackTask:
        """Record an attempt: done, rescheduled, or still open (see the module's text)."""
        now = datetime.now(UTC)
        words = mask_contacts(body.customer_words) if body.customer_words else None
        expectation = mask_contacts(body.expectation) if body.expectation else None
        outcome = mask_contacts(body.outcome)
        async with (
            pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cursor,
        ):
            row = await visible(cursor, actor, task_id, True)
            if row["state"] == TaskState.done.value:
                raise HTTPException(409, detail=f"callback task {task_id} is done already")
            await cursor.execute(
                """
                INSERT INTO callback_attempts (task_id, at, by, reached, outcome,
                    customer_words, expectation, emotion, satisfaction, reschedule_to,
                    new_feedback_number)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    task_id, now, actor.name, body.reached, outcome, words, expectation,
                    body.emotion.value if body.emotion else None, body.satisfaction,
                    body.reschedule_to, body.new_feedback_number,
                ),
            )  # fmt: skip
            if body.outcome in NOT_CONVENIENT or (not body.reached and body.reschedule_to):
                state, due, done_at = TaskState.rescheduled, body.reschedule_to, None
            elif body.reached:
                state, due, done_at = TaskState.done, None, now
            else:
                state, due, done_at = TaskState(row["state"]), None, None
            await cursor.execute(
                f"""
                UPDATE callback_tasks SET attempts = attempts + 1, state = %s,
                    due_at = coalesce(%s, due_at), done_at = %s, updated_at = %s,
                    outcome = %s, satisfaction = coalesce(%s, satisfaction),
                    new_feedback_number = coalesce(%s, new_feedback_number),
                    -- A new appointment is a new promise: missing it escalates again.
                    overdue_level = CASE WHEN %s::timestamptz IS NULL THEN overdue_level ELSE 0 END,
                    overdue_at = CASE WHEN %s::timestamptz IS NULL THEN overdue_at END,
                    head_due_at = CASE WHEN %s::timestamptz IS NULL THEN head_due_at END
                WHERE id = %s RETURNING {COLUMNS}
                """,
                (
                    state.value, due, done_at, now, outcome, body.satisfaction,
                    body.new_feedback_number, due, due, due, task_id,
                ),
            )  # fmt: skip
            updated = await cursor.fetchone()
        return CallbackTask.model_validate(updated)

    return router
