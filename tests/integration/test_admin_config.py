"""Stored configuration (issue #14, admin): SLA policies, the calendar and the rule book
changed through `/v1/admin/config/{kind}`, validated by the loaders' own models (422 naming
the field), versioned (409 on a stale version), admins only, with the actor recorded, and
in effect: in the running sla service within a poll, and at the next start."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.common import config_store
from services.common.settings import Settings
from tests.conftest import serve, wait_for, web_form

pytestmark = pytest.mark.integration
URL = "/v1/admin/config/sla_policies"


def with_first_response(body: dict[str, Any], target: str) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["clocks"]["first_response"] = [{"target": target, "time": "calendar"}]
    return changed


async def test_sla_policies_are_validated_versioned_audited_and_take_effect(
    settings: Settings,
) -> None:
    async with serve(settings) as running:
        client = running.client
        admin = running.as_staff("admin", username="admin.wang")
        current = await client.get(URL, headers=admin)
        assert current.status_code == 200, current.text
        shown = current.json()
        assert shown["version"] == 0 and shown["source"] == "file"
        assert shown["body"]["clocks"]["first_response"][0]["target"] == "4h"
        assert "sla service" in shown["effects"]["live"]

        # Only admins, reading or writing.
        for role in ("agent", "supervisor", "head", "quality"):
            staff = running.as_staff(role, ("finance",), agent_id="agent.x")
            assert (await client.get(URL, headers=staff)).status_code == 403
            put = {"expected_version": 0, "reason": "x", "body": shown["body"]}
            assert (await client.put(URL, json=put, headers=staff)).status_code == 403
        assert (await client.get(URL, headers={"Authorization": ""})).status_code == 401

        # A bad target is refused by the Policies model, naming the field.
        bad = {
            "expected_version": 0,
            "reason": "faster first response",
            "body": with_first_response(shown["body"], "4 hours"),
        }
        refused = await client.put(URL, json=bad, headers=admin)
        assert refused.status_code == 422, refused.text
        (problem,) = refused.json()["detail"]
        assert problem["loc"] == ["body", "body", "clocks", "first_response", 0, "target"]
        unknown_clock = copy.deepcopy(shown["body"])
        unknown_clock["clocks"]["lunch"] = [{"target": "1h"}]
        refused = await client.put(URL, json=bad | {"body": unknown_clock}, headers=admin)
        assert refused.status_code == 422 and "unknown clocks" in refused.text
        assert (await client.get(f"{URL}/history", headers=admin)).json() == []

        # A good one is version 1, by the signed-in admin.
        good = bad | {"body": with_first_response(shown["body"], "7h")}
        stored = await client.put(URL, json=good, headers=admin)
        assert stored.status_code == 200, stored.text
        assert stored.json()["version"] == 1 and stored.json()["changed_by"] == "admin.wang"

        # The same change on the version it no longer is: 409, nothing stored.
        stale = await client.put(URL, json=good | {"reason": "again"}, headers=admin)
        assert stale.status_code == 409 and stale.headers["X-Config-Version"] == "1"
        history = (await client.get(f"{URL}/history", headers=admin)).json()
        assert [(h["version"], h["changed_by"], h["reason"]) for h in history] == [
            (1, "admin.wang", "faster first response")
        ]

        # The running sla service picks it up within a poll; a new case's clock shows it.
        sla = running.platform.sla
        assert sla is not None
        await wait_for(
            lambda: sla.policies.clocks["first_response"][0].target == "7h",
            timeout=config_store.POLL_S * 3,
            what="the sla service on version 1",
        )
        accepted = await client.post("/v1/feedback", json=web_form())
        assert accepted.status_code == 202, accepted.text
        number = accepted.json()["feedback_number"]

        async def first_response_target() -> str | None:
            view = await client.get(f"/v1/cases/{number}")
            clocks = view.json().get("clocks", []) if view.status_code == 200 else []
            found = [c["target"] for c in clocks if c["clock"] == "first_response"]
            return found[0] if found else None

        assert await wait_for(first_response_target, timeout=60, what="the clock") == "7h"

    # A process started afterwards starts on the stored version.
    async with serve(settings, ("sla",)) as restarted:
        assert restarted.platform.configured.versions["sla_policies"] == 1
        assert restarted.platform.sla is not None
        assert restarted.platform.sla.policies.clocks["first_response"][0].target == "7h"


async def test_calendar_overrides_and_rules_are_checked_by_their_loaders(
    settings: Settings,
) -> None:
    async with serve(settings, ("sla",)) as running:
        client = running.client
        admin = running.as_staff("admin", username="admin.li")
        url = "/v1/admin/config/calendar"
        calendar = (await client.get(url, headers=admin)).json()
        assert calendar["body"]["zone"] == "Asia/Shanghai"
        body = calendar["body"] | {"extra_closed": ["2026-12-31"], "extra_working": ["2026-12-31"]}
        change = {"expected_version": 0, "reason": "year end", "body": body}
        refused = await client.put(url, json=change, headers=admin)
        assert refused.status_code == 422 and "both list 2026-12-31" in refused.text
        bad_day = calendar["body"] | {"extra_closed": ["2026-13-01"]}
        refused = await client.put(url, json=change | {"body": bad_day}, headers=admin)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"][:3] == ["body", "body", "extra_closed"]
        closed = calendar["body"] | {"extra_closed": ["2026-12-31"]}
        stored = await client.put(url, json=change | {"body": closed}, headers=admin)
        assert stored.status_code == 200, stored.text
        sla = running.platform.sla
        assert sla is not None
        from datetime import date

        await wait_for(
            lambda: not sla.calendar.is_working_day(date(2026, 12, 31)),
            timeout=config_store.POLL_S * 3,
            what="the calendar's extra closed day in effect",
        )

        rules_url = "/v1/admin/config/classification"
        rules = (await client.get(rules_url, headers=admin)).json()
        assert rules["version"] == 0 and "departments" in rules["body"]
        broken = copy.deepcopy(rules["body"])
        broken["general_department"] = "nowhere"
        refused = await client.put(
            rules_url,
            json={"expected_version": 0, "reason": "try", "body": broken},
            headers=admin,
        )
        assert refused.status_code == 422 and "nowhere" in refused.text
        unknown = await client.get("/v1/admin/config/roster", headers=admin)
        assert unknown.status_code == 422


async def test_a_new_rule_book_reaches_the_running_router(settings: Settings) -> None:
    async with serve(settings, ("routing",)) as running:
        client = running.client
        admin = running.as_staff("admin", username="admin.zhou")
        url = "/v1/admin/config/classification"
        rules = (await client.get(url, headers=admin)).json()["body"]
        # Rules alone (no model to train): the change is in effect within a poll.
        changed = rules | {"version": 2, "model": rules["model"] | {"enabled": False}}
        stored = await client.put(
            url,
            json={"expected_version": 0, "reason": "rules only", "body": changed},
            headers=admin,
        )
        assert stored.status_code == 200, stored.text
        routing = running.platform.routing
        assert routing is not None
        await wait_for(
            lambda: routing.classifier.book.version == 2 and routing.classifier.model is None,
            timeout=config_store.POLL_S * 3,
            what="the router on the stored rule book",
        )
