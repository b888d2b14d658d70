"""Classification, routing and assignment through the real bus and store: department
topics, repeat complaints, acceptance, disputes, reassignment, co-handlers, reclassification
and supervisor overrides."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from contracts.events import CaseEvent, FeedbackRouted, OwnerAssigned
from examples.department_subscriber import build_subscriber
from services.common.settings import Settings
from tests.conftest import registered_row, serve, wait_for, web_form

pytestmark = pytest.mark.integration


async def post(client, description: str, **extra) -> str:
    response = await client.post("/v1/feedback", json=web_form(description, **extra))
    assert response.status_code == 202, response.text
    return response.json()["feedback_number"]


async def test_routed_case_reaches_only_its_department_topic(settings: Settings) -> None:
    received: dict[str, list[CaseEvent]] = {"logistics": [], "tech": []}

    def collector(department: str):
        async def on_event(event: CaseEvent) -> None:
            received[department].append(event)

        return on_event

    async with serve(settings) as running:
        subscribers = [
            build_subscriber(
                settings.kafka_bootstrap_servers, d, collector(d), settings.topic_prefix
            )
            for d in received
        ]
        for subscriber in subscribers:
            await subscriber.start()
        try:
            number = await post(running.client, "订单说好三天送达，现在已经第七天了还没有收到货")
            row = await registered_row(running.client, number, status="assigned")
            assert row["department"] == "logistics"
            assert row["category"] == "logistics" and row["subcategory"] == "delay"
            assert row["feedback_type"] == "complaint" and row["priority"] == "high"
            assert row["owner"] in {"log-feng", "log-he"}
            assert any(r.startswith("sub.delay:") for r in row["classification_rules"])

            def logistics_heard() -> bool:
                kinds = {type(e) for e in received["logistics"] if e.feedback_number == number}
                return {FeedbackRouted, OwnerAssigned} <= kinds

            await wait_for(logistics_heard, timeout=30, what="logistics department topic")
            assert all(e.department == "logistics" for e in received["logistics"])
        finally:
            for subscriber in subscribers:
                await subscriber.stop()
        assert not [e for e in received["tech"] if e.feedback_number == number]


async def test_repeat_complaint_within_30_days_raises_priority(settings: Settings) -> None:
    async with serve(settings) as running:
        first = await post(running.client, "洗衣机脱水时异响很大", product_model="洗衣机 W10")
        row = await registered_row(running.client, first, status="assigned")
        assert row["priority"] == "medium" and "repeat" not in row["flags"]
        again = await post(running.client, "洗衣机又有异响了，噪音很大", product_model="洗衣机 W10")
        row = await registered_row(running.client, again, status="assigned")
        assert "repeat" in row["flags"] and row["priority"] == "high"
        other_customer = await post(
            running.client,
            "洗衣机异响",
            customer={"phone": "13900001111"},
            product_model="洗衣机 W10",
        )
        row = await registered_row(running.client, other_customer, status="assigned")
        assert "repeat" not in row["flags"]


async def test_accept_dispute_reassign_co_handle_reclassify_override(settings: Settings) -> None:
    async with serve(settings) as running:
        client = running.client
        number = await post(running.client, "账单里多扣了一笔39元的服务费，购买时没有任何人告知")
        row = await registered_row(client, number, status="assigned", department="finance")
        owner = row["owner"]
        assert owner == "fin-ma"

        fin_ma = running.as_staff("agent", ("finance",), owner)
        supervisor = running.as_staff("supervisor", ("finance",), username="supervisor-liu")
        head = running.as_staff("head", ("finance", "operations"), username="head-zhou")
        accept = f"/v1/cases/{number}/accept"
        other_department = running.as_staff("agent", ("customer_service",), "cs-li")
        assert (await client.post(accept, headers=other_department)).status_code == 403
        wrong = await client.post(accept, headers=running.as_staff("agent", ("finance",), "cs-li"))
        assert wrong.status_code == 409 and "not the pending owner" in wrong.json()["detail"]
        assert (await client.post(accept, headers={"Authorization": ""})).status_code == 401
        no_reason = await client.post(
            f"/v1/cases/{number}/dispute", json={"reason": ""}, headers=fin_ma
        )
        assert no_reason.status_code == 422
        assert (
            await client.post(accept, headers=supervisor | {"Authorization": "Bearer x"})
        ).status_code == 401
        # The actor is the token's: a body naming someone else is not believed.
        accepted = await client.post(accept, json={"agent_id": "cs-li"}, headers=fin_ma)
        assert accepted.json()["owner"] == owner
        assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
        await registered_row(client, number, status="accepted")

        due = (datetime.now(UTC) + timedelta(hours=24)).isoformat()
        co = await client.post(
            f"/v1/cases/{number}/co-handlers",
            json={"department": "customer_service", "duty": "向客户解释收费", "due_at": due},
            headers=fin_ma,
        )
        assert co.status_code == 200, co.text
        same = await client.post(
            f"/v1/cases/{number}/co-handlers",
            json={"department": "finance", "duty": "x", "due_at": due},
            headers=fin_ma,
        )
        assert same.status_code == 409

        by_agent = await client.post(
            f"/v1/cases/{number}/priority",
            json={"priority": "urgent", "reason": "客户已投诉到消协"},
            headers=fin_ma,
        )
        assert by_agent.status_code == 403
        override = await client.post(
            f"/v1/cases/{number}/priority",
            json={"priority": "urgent", "reason": "客户已投诉到消协"},
            headers=supervisor,
        )
        assert override.status_code == 200 and override.json()["priority"] == "urgent"
        row = await registered_row(client, number, priority="urgent")
        assert row["co_handlers"][0]["department"] == "customer_service"

        disputed = await client.post(
            f"/v1/cases/{number}/dispute",
            json={"reason": "这是门店收费，不归财务"},
            headers=fin_ma,
        )
        assert disputed.status_code == 200 and disputed.json()["status"] == "disputed"
        await registered_row(client, number, status="disputed", owner=None)

        moved = await client.post(
            f"/v1/cases/{number}/reclassify",
            json={"category": "policy", "subcategory": "terms", "reason": "门店收费条款问题"},
            headers=supervisor,
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["department"] == "operations"
        row = await registered_row(client, number, department="operations", status="assigned")
        assert row["owner"] == "ops-zheng" and row["category"] == "policy"

        assign = f"/v1/cases/{number}/assign"
        # Now an operations case: no longer the finance supervisor's to command.
        elsewhere = await client.post(
            assign, json={"agent_id": "fin-ma", "reason": "x"}, headers=supervisor
        )
        assert elsewhere.status_code == 403
        reassigned = await client.post(
            assign, json={"agent_id": "fin-ma", "reason": "x"}, headers=head
        )
        assert reassigned.status_code == 409 and "operations" in reassigned.json()["detail"]

        case = (await client.get(f"/v1/cases/{number}")).json()
        assert case["classification"]["rules"] == ["manual:supervisor-liu"]


async def test_case_waits_in_queue_until_someone_frees_up(settings: Settings) -> None:
    async with serve(settings) as running:
        client = running.client
        # finance has one agent (fin-ma, capacity 8): make him unavailable.
        put = await client.put(
            "/v1/agents/fin-ma",
            json={"name": "马会计", "department": "finance", "languages": ["zh", "en"], "vip": True,
                  "capacity": 8, "available": False},
        )  # fmt: skip
        assert put.status_code == 200
        number = await post(client, "发票金额开错了，比实际付款多了100元")
        await registered_row(client, number, status="queued", department="finance")
        queue = (await client.get("/v1/departments/finance/queue")).json()
        assert [item["feedback_number"] for item in queue] == [number]

        back = await client.put(
            "/v1/agents/fin-ma",
            json={"name": "马会计", "department": "finance", "languages": ["zh", "en"], "vip": True,
                  "capacity": 8, "available": True},
        )  # fmt: skip
        assert back.status_code == 200 and back.json()["open_work"] > 0
        await registered_row(client, number, status="assigned", owner="fin-ma")


async def test_unclear_feedback_goes_to_triage_then_a_person_routes_it(settings: Settings) -> None:
    async with serve(settings) as running:
        client = running.client
        number = await post(client, "关于上次那个事情")
        await registered_row(client, number, status="triage")
        assert number in [i["feedback_number"] for i in (await client.get("/v1/triage")).json()]
        # The choices a person reclassifies into, with where each routes.
        taxonomy = {c["code"]: c for c in (await client.get("/v1/taxonomy")).json()}
        delay = next(s for s in taxonomy["logistics"]["subcategories"] if s["code"] == "delay")
        assert delay["department"] == "logistics" and delay["label"]
        hard_to_use = taxonomy["product_function"]["subcategories"]
        assert {"code": "hard_to_use", "label": "操作复杂", "department": "product"} in hard_to_use
        routed = await client.post(
            f"/v1/cases/{number}/reclassify",
            json={"category": "logistics", "subcategory": "delay", "type": "complaint",
                  "reason": "客户电话确认是送货延迟"},
            headers=running.as_staff("supervisor", ("customer_service",), username="supervisor-liu"),
        )  # fmt: skip
        assert routed.status_code == 200, routed.text
        await registered_row(client, number, status="assigned", department="logistics")
        assert number not in [i["feedback_number"] for i in (await client.get("/v1/triage")).json()]


async def test_a_department_drops_an_event_delivered_twice(settings: Settings, tmp_path) -> None:
    """Every message names its event (headers and body); a department subscriber with
    `SeenEvents` handles a repeat (the relay's after a crash, simulated here) once."""
    import json

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from contracts import topics
    from examples.department_subscriber import SeenEvents

    handled: list[CaseEvent] = []

    async def on_event(event: CaseEvent) -> None:
        handled.append(event)

    seen = SeenEvents(tmp_path / "logistics.sqlite3")
    async with serve(settings) as running:
        subscriber = build_subscriber(
            settings.kafka_bootstrap_servers, "logistics", on_event, settings.topic_prefix, seen
        )
        await subscriber.start()
        try:
            number = await post(running.client, "订单说好三天送达，现在已经第七天了还没有收到货")
            await registered_row(running.client, number, status="assigned")

            def heard() -> bool:
                kinds = {type(e) for e in handled if e.feedback_number == number}
                return {FeedbackRouted, OwnerAssigned} <= kinds

            await wait_for(heard, timeout=30, what="the logistics events handled")
            topic = settings.topic(topics.department_topic("logistics"))
            consumer = AIOKafkaConsumer(
                topic,
                bootstrap_servers=settings.kafka_bootstrap_servers,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                batch = await consumer.getmany(timeout_ms=5000)
            finally:
                await consumer.stop()
            records = [r for rs in batch.values() for r in rs]
            ours = [r for r in records if json.loads(r.value)["feedback_number"] == number]
            assert ours
            for record in ours:
                body = json.loads(record.value)
                headers = {k: v.decode() for k, v in record.headers}
                assert headers["event-id"] == f"{body['feedback_id']}:{body['version']}"
                assert headers["case-version"] == str(body["version"])
            # The relay publishes the section again: the same messages, headers and all.
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
            await producer.start()
            try:
                for record in ours:
                    await producer.send_and_wait(
                        topic, record.value, key=record.key, headers=list(record.headers)
                    )
            finally:
                await producer.stop()
            await asyncio.sleep(3)
            # Later events of the case may arrive meanwhile (its clocks); none twice.
            versions = [e.version for e in handled if e.feedback_number == number]
            assert len(versions) == len(set(versions)), versions
            assert {json.loads(r.value)["version"] for r in ours} <= set(versions)
        finally:
            await subscriber.stop()
