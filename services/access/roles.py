"""Roles and the permission table: the one place that says who may do what.

Every guarded endpoint names an action; `allowed` decides. Departments scope the rest: a
department sees only its own cases (quality and admin see all, personal data never).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    agent = "agent"  # own cases and own department's queue
    supervisor = "supervisor"  # their department: assign, priority, reclassify, co-handlers
    head = "head"  # department head: their departments, escalations
    quality = "quality"  # quality / BI: reads everything, personal data never
    admin = "admin"  # users, agents, dead letters, erasure


A, S, H, Q, ADMIN = Role.agent, Role.supervisor, Role.head, Role.quality, Role.admin

# action -> roles allowed. The README's permission table is this table.
PERMISSIONS: dict[str, frozenset[Role]] = {
    "case.read": frozenset({A, S, H, Q, ADMIN}),
    "case.accept": frozenset({A, S}),
    "case.dispute": frozenset({A, S}),
    "case.assign": frozenset({S, H}),
    "case.escalate": frozenset({A, S}),
    "case.note": frozenset({A, S, H}),
    "case.plan": frozenset({A, S}),
    "case.co_respond": frozenset({A, S, H}),
    "case.resolve": frozenset({A, S}),
    "case.confirm": frozenset({A, S}),  # on the customer's behalf (customers use their token)
    "case.close": frozenset({A, S, H}),
    "case.reopen": frozenset({S, H}),
    "case.complex": frozenset({S, H}),
    "case.archive": frozenset({S, H}),
    # The owner asks another department to co-handle; supervisors and heads may too.
    "case.co_handle": frozenset({A, S, H}),
    "case.reclassify": frozenset({S, H}),
    "case.priority": frozenset({S, H}),
    "queue.read": frozenset({A, S, H, Q, ADMIN}),
    "triage.read": frozenset({S, H, Q, ADMIN}),
    "sla.read": frozenset({S, H, Q, ADMIN}),  # the SLA board
    "registration.read": frozenset({A, S, H, Q, ADMIN}),
    "agent.read": frozenset({S, H, Q, ADMIN}),
    "agent.write": frozenset({ADMIN}),
    # Feedback entered by staff: phone calls, callback findings, batch files, .eml imports.
    "intake.staff": frozenset({A, S, H, ADMIN}),
    "deadletter.manage": frozenset({ADMIN}),
    "customer.erase": frozenset({ADMIN}),
    # Revealing a customer's contact details: the roles are configured
    # (FEEDBACK_PII_REVEAL_ROLES); quality never, whatever the configuration says.
    "contact.reveal": frozenset({S, H, ADMIN}),
    # Opening a case's attachments (photos, recordings, transcripts may show contact
    # details): the people who handle cases, audited; quality never.
    "evidence.read": frozenset({A, S, H, ADMIN}),
    "audit.read": frozenset({ADMIN}),
    "metrics.read": frozenset({Q, ADMIN}),
    "inbox.read": frozenset({A, S, H, Q, ADMIN}),  # one's own in-app notifications
    "user.manage": frozenset({ADMIN}),
    # Callbacks (回访): the worklist, and recording an attempt.
    "callback.read": frozenset({A, S, H, Q}),
    "callback.record": frozenset({A, S, H}),
    # Reports (summary JSON, XLSX, CSV, HTML): supervisors and heads for their departments.
    "report.read": frozenset({S, H, Q, ADMIN}),
    # Archive search (department-scoped) and the case library (知识库) of resolved cases.
    "search.read": frozenset({A, S, H, Q, ADMIN}),
    "library.read": frozenset({A, S, H, Q, ADMIN}),
    "library.publish": frozenset({S, H}),
    # Stored configuration (SLA policies, calendar, classification rules): admins.
    "config.read": frozenset({ADMIN}),
    "config.write": frozenset({ADMIN}),
}
SEES_EVERY_DEPARTMENT = frozenset({Q, ADMIN})


@dataclass(frozen=True)
class Actor:
    """The signed-in person a request acts for (from the token, never from the body)."""

    username: str
    role: Role
    departments: tuple[str, ...] = ()
    agent_id: str | None = None
    # When the token naming this actor was issued (seconds since the epoch).
    issued_at: float | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """How the actor is recorded on a case: the agent id where there is one."""
        return self.agent_id or self.username


def allowed(actor: Actor, action: str) -> bool:
    roles = PERMISSIONS.get(action)
    if roles is None:
        raise KeyError(f"no such action {action!r} in the permission table")
    return actor.role in roles


# Cases not routed yet (triage) are worked by this department's supervisors and heads.
TRIAGE_DEPARTMENT = "customer_service"


def sees_department(actor: Actor, department: str | None) -> bool:
    """Whether the actor may see a case of this department (None: not routed yet, in
    triage, which the triage department's supervisors and heads work on)."""
    if actor.role in SEES_EVERY_DEPARTMENT:
        return True
    if department is None:
        return actor.role in (S, H) and TRIAGE_DEPARTMENT in actor.departments
    return department in actor.departments


def visible_departments(actor: Actor) -> tuple[str, ...] | None:
    """The departments whose cases the actor sees; None for all of them."""
    return None if actor.role in SEES_EVERY_DEPARTMENT else actor.departments
