"""Which commands a person may give a case now, in one place.

The answer joins what the Case aggregate would accept in its present state
(services/cases/domain.py) with what the API lets this person do (the permission table,
ownership for agents, the configured reveal roles). `GET /v1/cases/{n}` returns it as
`actions`, so a client (the console) offers exactly the commands that would be accepted,
and the rules are not copied into page templates.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.access.roles import Actor, Role, allowed
from services.cases.domain import HANDLING, Case, CaseStatus

# In the order a case usually meets them; names are the console's and the API answer's.
ACTIONS = (
    "accept",
    "dispute",
    "assign",
    "plan",
    "note",
    "info_request",
    "co_handler",
    "escalate",
    "resolve",
    "confirm",
    "rate",
    "reopen",
    "complex",
    "close",
    "archive",
    "reveal_contact",
)
# Information may be requested while the owner works on the case (not while already waiting).
ASKING = frozenset({CaseStatus.accepted, CaseStatus.in_progress, CaseStatus.reopened})
RESULT_GIVEN = frozenset({CaseStatus.resolved, CaseStatus.confirmed, CaseStatus.closed})
FINISHED = frozenset({CaseStatus.closed, CaseStatus.archived})
# A supervisor picks an owner while no one has taken the case for good.
ASSIGNABLE = frozenset({CaseStatus.queued, CaseStatus.assigned, CaseStatus.disputed})


def possible_actions(case: Case, actor: Actor, reveal_roles: Iterable[str]) -> list[str]:
    """The commands `actor` may give `case` now (the caller has checked the department)."""
    status = case.status
    owner = actor.agent_id is not None and case.owner == actor.agent_id
    # Agents act on their own cases only; supervisors and heads on their departments'.
    acts_on_it = owner or actor.role in (Role.supervisor, Role.head)
    supervising = actor.role in (Role.supervisor, Role.head)

    def may(action: str) -> bool:
        return allowed(actor, action)

    possible = {
        "accept": may("case.accept") and owner and status is CaseStatus.assigned,
        "dispute": may("case.dispute")
        and owner
        and status in (CaseStatus.assigned, CaseStatus.accepted),
        "assign": may("case.assign") and case.department is not None and status in ASSIGNABLE,
        "plan": may("case.plan") and acts_on_it and status in HANDLING,
        "note": may("case.note") and acts_on_it and status not in FINISHED,
        "info_request": may("case.plan") and acts_on_it and status in ASKING,
        "co_handler": may("case.co_handle") and acts_on_it and status in HANDLING,
        "escalate": may("case.escalate") and owner and status not in FINISHED,
        "resolve": may("case.resolve")
        and acts_on_it
        and status in HANDLING
        and status is not CaseStatus.pending_info,
        "confirm": may("case.confirm") and acts_on_it and status is CaseStatus.resolved,
        "rate": may("case.confirm")
        and acts_on_it
        and status in RESULT_GIVEN
        and not case.rated_result,
        "reopen": may("case.reopen") and status in RESULT_GIVEN,
        "complex": may("case.complex") and not case.complex and status not in FINISHED,
        # The owner closes a confirmed case; supervisors and heads any open one, with a reason.
        "close": may("case.close")
        and status not in FINISHED
        and (supervising or (owner and status is CaseStatus.confirmed)),
        "archive": may("case.archive") and status is CaseStatus.closed,
        "reveal_contact": may("contact.reveal")
        and actor.role is not Role.quality
        and actor.role.value in tuple(reveal_roles),
    }
    return [action for action in ACTIONS if possible[action]]
