"""What every channel promises: one registration per message however often it arrives,
unique numbers across intake processes, no personal data on the bus or in read models,
nothing lost while Kafka is down, erasure on request."""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from uuid import uuid4

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from contracts import topics
from contracts.codes import Channel
from contracts.events import FeedbackReceived
from deploy.kafka_broker import start_kafka
from services.common.settings import Settings
from services.intake.channels.chat_social import wechat_signature
from services.intake.pii_vault import Contact
from tests.conftest import free_port, registered_row, serve, wait_for, web_form

pytestmark = pytest.mark.integration
TOKEN = "wechat-token-test"


async def test_concurrent_duplicate_pushes_register_once(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"wechat_token": SecretStr(TOKEN), "wechat_allow_plaintext": True}
    )
    async with serve(settings, ("intake",)) as running:
        timestamp = str(int(time.time()))

        def params(nonce: str) -> dict[str, str]:
            # Each delivery is signed anew (an exact replay of one is refused, see below).
            signature = wechat_signature(TOKEN, timestamp, nonce)
            return {"signature": signature, "timestamp": timestamp, "nonce": nonce}

        xml = (
            "<xml><ToUserName>gh</ToUserName><FromUserName>oDup</FromUserName>"
            f"<CreateTime>{timestamp}</CreateTime><MsgType>text</MsgType>"
            "<Content>快递箱子压扁了</Content><MsgId>555000111</MsgId></xml>"
        ).encode()
        answers = await asyncio.gather(
            *[
                running.client.post("/v1/channels/wechat", params=params(f"n{i}"), content=xml)
                for i in range(20)
            ]
        )
        assert all(a.status_code == 200 for a in answers)
        replayed = await running.client.post(
            "/v1/channels/wechat", params=params("n3"), content=xml
        )
        assert replayed.status_code == 403 and "replay" in replayed.text
        with psycopg.connect(settings.database_url) as conn:
            rows = conn.execute(
                "SELECT feedback_number FROM intake_registry WHERE channel = 'wechat'"
            ).fetchall()
        assert len(rows) == 1

        headers = {"Idempotency-Key": "same-form-submit"}
        posts = await asyncio.gather(
            *[
                running.client.post("/v1/feedback", json=web_form(), headers=headers)
                for _ in range(10)
            ]
        )
        numbers = {p.json()["feedback_number"] for p in posts if p.status_code == 202}
        assert len(numbers) == 1
        assert all(
            p.status_code in (202, 409) for p in posts
        )  # 409: "still being registered; retry"


NUMBERING_SCRIPT = """
import asyncio, json, sys
from datetime import datetime
from psycopg_pool import AsyncConnectionPool
from services.intake.numbering import FeedbackNumbering, SerialAllocator

async def main(url, count, block):
    pool = AsyncConnectionPool(url, min_size=4, max_size=4, kwargs={"autocommit": True}, open=False)
    await pool.open()
    numbering = FeedbackNumbering(SerialAllocator(pool, block))
    day = datetime(2024, 5, 20)
    async def worker(n):
        # Batches of 1 to 5 numbers, as registration batches take them.
        numbers = []
        while len(numbers) < n:
            numbers += await numbering.feedback_numbers(day, min(n - len(numbers), len(numbers) % 5 + 1))
        return numbers
    results = await asyncio.gather(*[worker(count // 4) for _ in range(4)])
    await pool.close()
    print(json.dumps([n for r in results for n in r]))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


@pytest.mark.parametrize("block", [1, 20])
def test_ten_thousand_numbers_from_two_processes_are_unique(settings: Settings, block: int) -> None:
    from services.common.database import apply_schema
    from services.intake.numbering import SCHEMA

    apply_schema(settings.database_url, SCHEMA)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", NUMBERING_SCRIPT, settings.database_url, "5000", str(block)],
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    numbers = []
    for process in processes:
        out, _ = process.communicate(timeout=240)
        assert process.returncode == 0
        numbers += json.loads(out)
    assert len(numbers) == 10_000
    assert len(set(numbers)) == 10_000
    assert all(n.startswith("F20240520-") for n in numbers)


PERSONAL = ["张伟", "13812345678", "zhang.wei@example.com", "北京市朝阳区幸福路1号"]


async def test_personal_data_never_on_the_bus_or_in_read_models(settings: Settings) -> None:
    async with serve(settings) as running:
        body = web_form(
            "打印机无法连接WiFi，请打13812345678或发邮件到zhang.wei@example.com联系张先生",
            customer={
                "name": "张伟",
                "phone": "13812345678",
                "email": "zhang.wei@example.com",
                "address": "北京市朝阳区幸福路1号",
            },
            product_model="LP-2200",
        )
        response = await running.client.post("/v1/feedback", json=body)
        number = response.json()["feedback_number"]
        await running.client.post(
            f"/v1/feedback/{number}/supplements",
            json={"channel": "phone", "text": "我的新号码13812345678，邮箱zhang.wei@example.com"},
        )

        async def settled() -> bool:
            got = await running.client.get(f"/v1/feedback/{number}")
            return got.status_code == 200 and got.json()["correspondence_count"] == 1

        await wait_for(settled, timeout=30, what="registration and correspondence projected")

    everything = await _all_messages(settings)
    assert everything, "nothing read from the topics"
    for value in PERSONAL:
        assert value not in everything, f"{value} found on the bus"
    with psycopg.connect(settings.database_url) as conn:
        for table in ("registrations", "routing_cases", "cases_events"):
            dump = json.dumps(
                [list(map(str, r)) for r in conn.execute(f"SELECT * FROM {table}").fetchall()],
                ensure_ascii=False,
            )
            if table == "cases_events":
                dump += b"".join(
                    bytes(r[0]) for r in conn.execute("SELECT state FROM cases_events")
                ).decode()
            for value in PERSONAL:
                assert value not in dump, f"{value} found in {table}"
        sealed = conn.execute("SELECT sealed FROM pii_customers").fetchall()
        assert sealed and all(b"13812345678" not in bytes(r[0]) for r in sealed)


async def _all_messages(settings: Settings) -> str:
    consumer = AIOKafkaConsumer(
        *[
            settings.topic(t)
            for t in (topics.FEEDBACK_RECEIVED, topics.CORRESPONDENCE, topics.FEEDBACK_EVENTS)
        ],
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    chunks: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch and chunks:
                break
            for records in batch.values():
                chunks += [(r.value or b"").decode() for r in records]
    finally:
        await consumer.stop()
    return "\n".join(chunks)


async def test_mail_accepted_while_kafka_is_down_is_not_lost(settings: Settings, tmp_path) -> None:
    kafka_port, controller_port = free_port(), free_port()
    kafka = start_kafka(tmp_path / "kafka", port=kafka_port, controller_port=controller_port)
    try:
        settings = settings.model_copy(
            update={
                "kafka_bootstrap_servers": kafka.bootstrap_servers,
                "smtp_port": free_port(),
                "publish_timeout_s": 3.0,
                "evidence_dir": tmp_path / "evidence",
            }
        )
        async with serve(settings) as running:
            kafka.stop()
            numbers = []
            for i in range(5):
                mail = EmailMessage()
                mail["Subject"] = f"第{i}封：快递还没到"
                mail["From"] = "buyer@example.com"
                mail["Message-ID"] = make_msgid()
                mail.set_content("订单说好三天送达，现在已经第七天了还没有收到货")
                numbers.append(await asyncio.to_thread(_send, settings, mail))
            with psycopg.connect(settings.database_url) as conn:
                buffered = conn.execute("SELECT count(*) FROM intake_outbox").fetchone()
            assert buffered is not None and buffered[0] >= 5
            kafka = start_kafka(
                tmp_path / "kafka", port=kafka_port, controller_port=controller_port
            )

            async def all_registered() -> bool:
                for number in numbers:
                    got = await running.client.get(f"/v1/feedback/{number}")
                    if got.status_code != 200:
                        return False
                return True

            await wait_for(
                all_registered, timeout=90, what="buffered mails registered after the restart"
            )
        with psycopg.connect(settings.database_url) as conn:
            assert conn.execute("SELECT count(*) FROM intake_outbox").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM registrations").fetchone() == (5,)
    finally:
        kafka.stop()


def _send(settings: Settings, mail: EmailMessage) -> str:
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("buyer@example.com")
        smtp.rcpt("service@company.example")
        code, answer = smtp.data(mail.as_bytes())
        assert code == 250, answer
        return answer.decode().split()[-1]


async def test_customer_erasure_shreds_the_personal_data(settings: Settings) -> None:
    async with serve(settings, ("intake",)) as running:
        await running.client.post("/v1/feedback", json=web_form())
        vault = running.platform.vault
        with psycopg.connect(settings.database_url) as conn:
            (customer_ref,) = conn.execute("SELECT customer_ref FROM pii_customers").fetchone()
        assert await vault.reveal(customer_ref) is not None
        erased = await running.client.delete(
            f"/v1/customers/{customer_ref}/personal-data", params={"reason": "客户依法要求删除"}
        )
        assert erased.status_code == 200
        assert await vault.reveal(customer_ref) is None
        with psycopg.connect(settings.database_url) as conn:
            assert conn.execute("SELECT sealed FROM pii_customers").fetchone() == (None,)
            assert conn.execute("SELECT count(*) FROM pii_customer_lookup").fetchone() == (0,)
        again = await running.client.delete(
            f"/v1/customers/{customer_ref}/personal-data", params={"reason": "客户依法要求删除"}
        )
        assert again.status_code == 404


async def test_number_blocks_under_more_concurrency_than_the_pool(settings: Settings) -> None:
    # Blocks are reserved outside the registration transaction: 60 requests at once must
    # not each hold a pooled connection while waiting for another one.
    settings = settings.model_copy(update={"number_block_size": 5})
    async with serve(settings, ("intake",)) as running:
        answers = await asyncio.wait_for(
            asyncio.gather(
                *[
                    running.client.post(
                        "/v1/feedback", json=web_form(customer={"phone": f"1390000{i:04d}"})
                    )
                    for i in range(60)
                ]
            ),
            timeout=60,
        )
        assert [a.status_code for a in answers] == [202] * 60
        assert len({a.json()["feedback_number"] for a in answers}) == 60


async def test_a_new_customer_writing_everywhere_at_once_gets_one_pseudonym(
    settings: Settings,
) -> None:
    # Two intake instances, 40 feedbacks from one new customer at once: within a batch the
    # contacts are grouped, across instances the later claim is folded into the first.
    async with serve(settings, ("intake",)) as one, serve(settings, ("intake",)) as other:
        answers = await asyncio.gather(
            *[
                client.post(
                    "/v1/feedback",
                    json=web_form(f"第{i}次：洗衣机漏水", customer={"phone": "13700001111"}),
                )
                for i, client in enumerate([one.client, other.client] * 20)
            ]
        )
    assert [a.status_code for a in answers] == [202] * 40
    numbers = {a.json()["feedback_number"] for a in answers}
    received = [json.loads(line) for line in (await _all_messages(settings)).splitlines()]
    references = {m["customer_ref"] for m in received if m.get("feedback_number") in numbers}
    assert len(references) == 1
    with psycopg.connect(settings.database_url) as conn:
        customers = conn.execute("SELECT customer_ref FROM pii_customers").fetchall()
        owners = conn.execute("SELECT DISTINCT customer_ref FROM pii_customer_lookup").fetchall()
    assert customers == owners == [(references.pop(),)]


async def test_a_registration_abandoned_before_kafka_answered_is_finished_by_its_retry(
    settings: Settings,
) -> None:
    # The process registering it died after committing the claim, before Kafka answered:
    # the claim stays unpublished. A retry of the same delivery, well after the publish
    # timeout, publishes the kept event (routing keeps one case per feedback id).
    settings = settings.model_copy(update={"publish_timeout_s": 2.0})
    now = datetime.now(UTC)
    event = FeedbackReceived(
        feedback_id=uuid4(),
        feedback_number=f"F{now:%Y%m%d}-9001",
        received_at=now,
        registered_at=now,
        channel=Channel.web_form,
        customer_ref="客户-2026-9001",
        description="空调外机噪音很大，晚上无法入睡",
        receiver="web_form",
    )
    async with serve(settings) as running:
        assert running.platform.vault is not None
        caller = running.platform.vault.caller_of(Contact(**web_form()["customer"]))
        key = f"idempotency:web_form:{caller}:abandoned"
        with psycopg.connect(settings.database_url) as conn:
            conn.execute(
                "INSERT INTO intake_deduplication (dedup_key, feedback_id, feedback_number, "
                "published, pending_event, created_at) "
                "VALUES (%s, %s, %s, false, %s, now() - interval '1 minute')",
                (key, event.feedback_id, event.feedback_number, event.model_dump_json().encode()),
            )
        retry = await running.client.post(
            "/v1/feedback", json=web_form(), headers={"Idempotency-Key": "abandoned"}
        )
        assert retry.status_code == 202, retry.text
        assert retry.json()["feedback_number"] == event.feedback_number
        assert retry.json()["duplicate"] is True
        row = await registered_row(running.client, event.feedback_number)
        assert row["customer_ref"] == "客户-2026-9001"
        again = await running.client.post(
            "/v1/feedback", json=web_form(), headers={"Idempotency-Key": "abandoned"}
        )
        assert again.json()["feedback_number"] == event.feedback_number
        with psycopg.connect(settings.database_url) as conn:
            claim = conn.execute(
                "SELECT published, pending_event FROM intake_deduplication WHERE dedup_key = %s",
                (key,),
            ).fetchone()
            registered = conn.execute(
                "SELECT count(*) FROM intake_registry WHERE feedback_number = %s",
                (event.feedback_number,),
            ).fetchone()
        assert claim == (True, None) and registered == (1,)
