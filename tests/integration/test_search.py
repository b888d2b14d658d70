"""Archive search and the case library against real PostgreSQL: Chinese two-character
words and model numbers found in the right cases only, filters, cursor pages that give
every row once, department scope, and publishing, searching and suggesting library entries.

Most cases are written straight into the registration table (as the projection writes
them) and indexed with `search.reindex`; one goes through intake and the projection."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from services.common.settings import Settings
from services.projections import search
from tests.conftest import registered_row, serve, web_form

pytestmark = pytest.mark.integration

BASE = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai

# number -> (description, product model, department, status, channel, category, day)
CASES: dict[str, tuple[str, str | None, str | None, str, str, str, int]] = {
    "F20260302-0001": ("我家的洗衣机从昨天开始漏水，地板都湿了", "X200", "after_sales", "resolved",
                       "phone", "product_quality", 0),
    "F20260302-0002": ("申请退款已经两周了还没有到账，请尽快处理", None, "finance", "queued",
                       "web_form", "billing", 0),
    "F20260302-0003": ("X200-Pro 开机后屏幕闪烁，无法正常使用", "X200-Pro", "tech", "in_progress",
                       "email", "product_function", 1),
    "F20260302-0004": ("型号X2000的冰箱不制冷，水管有点漏", "X2000", "after_sales", "closed",
                       "phone", "product_quality", 1),
    "F20260302-0005": ("快递员态度很差，包裹外箱破损", None, "logistics", "queued",
                       "wechat", "delivery", 2),
    "F20260302-0006": ("退货后迟迟不给退款，客服也不回复", None, "finance", "resolved",
                       "web_chat", "billing", 2),
    "F20260302-0007": ("空调外机漏水滴到楼下，邻居投诉", "K-35", "after_sales", "queued",
                       "phone", "product_quality", 3),
    "F20260302-0008": ("还没分派的反馈：洗碗机漏水", None, None, "triage",
                       "web_form", "product_quality", 3),
}  # fmt: skip


def insert_cases(url: str, cases: dict[str, tuple[Any, ...]]) -> dict[str, uuid.UUID]:
    ids: dict[str, uuid.UUID] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for number, (text, model, department, status, channel, category, day) in cases.items():
            ids[number] = uuid.uuid4()
            at = BASE + timedelta(days=day, minutes=int(number[-4:]))
            conn.execute(
                "INSERT INTO registrations (feedback_id, feedback_number, received_at, "
                "registered_at, channel, customer_ref, customer_tier, product_model, "
                "description, receiver, registration_late, status, last_version, updated_at, "
                "department, category, feedback_type) VALUES (%s, %s, %s, %s, %s, %s, 'normal', "
                "%s, %s, 'test', false, %s, 1, %s, %s, %s, 'complaint')",
                (ids[number], number, at, at, channel, f"客户-{number}", model, text, status,
                 at, department, category),
            )  # fmt: skip
    return ids


async def index_all(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await search.reindex(conn)


def numbers(answer: Any) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {item["feedback_number"] for item in answer.json()["items"]}


async def test_search_finds_words_and_models_in_the_right_cases(settings: Settings) -> None:
    async with serve(settings, ("projections",)) as running:
        client = running.client
        insert_cases(settings.database_url, CASES)
        assert await index_all(settings.database_url) == len(CASES)

        async def found(**params: Any) -> set[str]:
            return numbers(await client.get("/v1/search", params=params))

        assert await found(q="漏水") == {
            "F20260302-0001", "F20260302-0007", "F20260302-0008"
        }  # fmt: skip
        assert await found(q="退款") == {"F20260302-0002", "F20260302-0006"}
        # X200 is not X2000; X200-Pro is X200 then Pro.
        assert await found(q="X200") == {"F20260302-0001", "F20260302-0003"}
        assert await found(q="x200 pro") == {"F20260302-0003"}
        assert await found(q="X2000") == {"F20260302-0004"}
        assert await found(q="ｘ２００") == {"F20260302-0001", "F20260302-0003"}
        assert await found(q="洗衣机 漏水") == {"F20260302-0001"}
        # One character: every case that has it ("漏" in 漏水 and at a run's end in 有点漏).
        assert await found(q="漏") == {
            "F20260302-0001", "F20260302-0004", "F20260302-0007", "F20260302-0008"
        }  # fmt: skip
        assert await found(q="不存在的词") == set()
        # Hostile text is only text.
        for hostile in ("it's", "a\\b", "' | '", "漏水') OR 1=1 --", "!(a & b) <-> c:*", "'\\'"):
            answer = await client.get("/v1/search", params={"q": hostile})
            assert answer.status_code == 200, (hostile, answer.text)
        assert (await client.get("/v1/search", params={"q": "a\x00b"})).status_code == 422
        # The best match first, with a snippet of the masked description.
        page = (await client.get("/v1/search", params={"q": "漏水 楼下"})).json()
        assert [i["feedback_number"] for i in page["items"]] == ["F20260302-0007"]
        assert "漏水" in page["items"][0]["snippet"] and page["items"][0]["rank"] > 0

        # Filters, alone and with text.
        assert await found(channel="phone") == {
            "F20260302-0001", "F20260302-0004", "F20260302-0007"
        }  # fmt: skip
        assert await found(q="漏水", department="after_sales") == {
            "F20260302-0001", "F20260302-0007"
        }  # fmt: skip
        assert await found(status="resolved") == {"F20260302-0001", "F20260302-0006"}
        assert await found(category="billing", q="退款", type="complaint") == {
            "F20260302-0002", "F20260302-0006"
        }  # fmt: skip
        assert await found(product_model="x200-pro") == {"F20260302-0003"}
        assert await found(tier="vip") == set()
        # Days are whole days in the calendar's zone; `to` includes its day.
        assert await found(**{"from": "2026-03-03", "to": "2026-03-03"}) == {
            "F20260302-0003", "F20260302-0004"
        }  # fmt: skip
        assert await found(**{"from": "2026-03-05T09:00:00+08:00"}) == {
            "F20260302-0007", "F20260302-0008"
        }  # fmt: skip
        assert (await client.get("/v1/search", params={"type": "nonsense"})).status_code == 422
        assert (await client.get("/v1/search", params={"from": "yesterday"})).status_code == 422


@pytest.mark.parametrize("ranked_at_most", [2000, 10])
async def test_cursor_pages_give_every_row_exactly_once(
    settings: Settings, ranked_at_most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Text matching more than RANKED_AT_MOST cases is ordered newest first.
    monkeypatch.setattr(search, "RANKED_AT_MOST", ranked_at_most)
    many = {
        f"F20260302-{100 + i:04d}": (
            ("漏水" * (1 + i % 3)) + f"第{i}号案例" + ("，退款" if i % 2 else ""),
            None, "after_sales", "queued", "phone", "product_quality", i % 4,
        )
        for i in range(47)
    }  # fmt: skip
    async with serve(settings, ("projections",)) as running:
        client = running.client
        insert_cases(settings.database_url, many)
        await index_all(settings.database_url)
        for params, expected in (
            ({"q": "漏水"}, 47),
            ({"q": "漏水 退款"}, 23),
            ({}, 47),
            ({"department": "after_sales"}, 47),
        ):
            seen: list[str] = []
            ranks: list[tuple[float, str]] = []
            cursor = None
            while True:
                page = await client.get(
                    "/v1/search",
                    params={**params, "limit": 5, **({"cursor": cursor} if cursor else {})},
                )
                assert page.status_code == 200, page.text
                body = page.json()
                seen += [i["feedback_number"] for i in body["items"]]
                ranked = "q" in params and ranked_at_most > expected
                assert body["order"] == ("rank" if ranked else "newest"), params
                ranks += [(i["rank"] or 0.0, i["received_at"]) for i in body["items"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert len(seen) == expected == len(set(seen)), params
            if "q" in params and ranked_at_most > expected:
                assert [r[0] for r in ranks] == sorted((r[0] for r in ranks), reverse=True)
            else:
                assert [r[1] for r in ranks] == sorted((r[1] for r in ranks), reverse=True)
        # A cursor is for the search that gave it out.
        first = (await client.get("/v1/search", params={"q": "漏水", "limit": 5})).json()
        other = await client.get("/v1/search", params={"q": "退款", "cursor": first["next_cursor"]})
        assert other.status_code == 422
        assert (
            await client.get("/v1/search", params={"cursor": "not-a-cursor"})
        ).status_code == 422


async def test_departments_see_only_their_cases(settings: Settings) -> None:
    async with serve(settings, ("projections",)) as running:
        client = running.client
        insert_cases(settings.database_url, CASES)
        await index_all(settings.database_url)

        async def found(headers: dict[str, str], **params: Any) -> set[str]:
            return numbers(await client.get("/v1/search", params=params, headers=headers))

        finance = running.as_staff("agent", ("finance",), agent_id="fin-ma")
        assert await found(finance, q="退款") == {"F20260302-0002", "F20260302-0006"}
        assert await found(finance, q="漏水") == set()
        assert await found(finance, department="after_sales") == set()
        assert await found(finance) == {"F20260302-0002", "F20260302-0006"}
        # Cases in triage: customer service's supervisors and heads, and quality.
        triage = running.as_staff("supervisor", ("customer_service",))
        assert await found(triage, q="漏水") == {"F20260302-0008"}
        assert await found(running.as_staff("agent", ("customer_service",)), q="漏水") == set()
        quality = running.as_staff("quality")
        assert await found(quality, q="漏水") == {
            "F20260302-0001", "F20260302-0007", "F20260302-0008"
        }  # fmt: skip


async def test_case_library_publish_search_and_similar(settings: Settings) -> None:
    async with serve(settings, ("projections",)) as running:
        client = running.client
        insert_cases(settings.database_url, CASES)
        supervisor = running.as_staff("supervisor", ("after_sales",), username="sup.wang")
        entry = {
            "problem": "X200 洗衣机排水管接口松动导致漏水",
            "cause": "安装时排水管卡扣未扣紧",
            "solution": "上门重新安装排水管并更换卡扣；有问题请拨打 138-1234-5678",
        }
        published = await client.post(
            "/v1/cases/F20260302-0001/library",
            json=entry | {"published_by": "someone.else"},
            headers=supervisor,
        )
        assert published.status_code == 422  # who publishes comes from the token only
        published = await client.post(
            "/v1/cases/F20260302-0001/library", json=entry, headers=supervisor
        )
        assert published.status_code == 201, published.text
        body = published.json()
        assert body["published_by"] == "sup.wang" and body["published_role"] == "supervisor"
        assert body["product_model"] == "X200" and body["category"] == "product_quality"
        assert "138****5678" in body["solution"] and "1234" not in body["solution"]
        again = await client.post(
            "/v1/cases/F20260302-0001/library", json=entry, headers=supervisor
        )
        assert again.status_code == 409
        # Only a case with a result; only a case the publisher's department sees; agents never.
        assert (
            await client.post("/v1/cases/F20260302-0007/library", json=entry, headers=supervisor)
        ).status_code == 409
        fridge = {"problem": "X2000 冰箱水管接头渗漏", "cause": "水管老化", "solution": "更换水管"}
        assert (
            await client.post("/v1/cases/F20260302-0004/library", json=fridge, headers=supervisor)
        ).status_code == 201
        assert (
            await client.post("/v1/cases/F20260302-0006/library", json=entry, headers=supervisor)
        ).status_code == 403
        assert (
            await client.post("/v1/cases/F20260302-9999/library", json=entry, headers=supervisor)
        ).status_code == 404
        agent = running.as_staff("agent", ("after_sales",), agent_id="as-li")
        assert (
            await client.post("/v1/cases/F20260302-0001/library", json=entry, headers=agent)
        ).status_code == 403
        blank = entry | {"cause": " \u200b "}
        assert (
            await client.post("/v1/cases/F20260302-0001/library", json=blank, headers=supervisor)
        ).status_code == 422
        nul = entry | {"problem": "漏\x00水"}
        assert (
            await client.post("/v1/cases/F20260302-0001/library", json=nul, headers=supervisor)
        ).status_code == 422

        async def entries(**params: Any) -> list[str]:
            answer = await client.get("/v1/library", params=params, headers=agent)
            assert answer.status_code == 200, answer.text
            return [e["source_feedback_number"] for e in answer.json()["items"]]

        assert await entries(q="漏水") == ["F20260302-0001"]
        assert sorted(await entries(q="漏")) == ["F20260302-0001", "F20260302-0004"]
        assert await entries(q="卡扣") == ["F20260302-0001"]
        assert await entries(q="x200") == ["F20260302-0001"]
        assert await entries(product_model="x2000") == ["F20260302-0004"]
        assert await entries(q="水管", category="product_quality") == [
            "F20260302-0004", "F20260302-0001"
        ]  # fmt: skip
        assert await entries(category="billing") == []
        assert await entries(q="退款") == []
        assert await entries() == ["F20260302-0004", "F20260302-0001"]  # newest first

        async def suggested(number: str, headers: dict[str, str]) -> list[str]:
            answer = await client.get(f"/v1/cases/{number}/similar", headers=headers)
            assert answer.status_code == 200, answer.text
            return [e["source_feedback_number"] for e in answer.json()["items"]]

        # The case view suggests entries like the case, its own entry never.
        assert await suggested("F20260302-0007", agent) == ["F20260302-0001"]  # 漏水
        assert await suggested("F20260302-0004", agent) == ["F20260302-0001"]  # 水管
        tech = running.as_staff("agent", ("tech",))
        assert await suggested("F20260302-0003", tech) == ["F20260302-0001"]  # x200
        assert await suggested("F20260302-0001", agent) == []  # nothing in common
        assert (
            await client.get("/v1/cases/F20260302-0002/similar", headers=agent)
        ).status_code == 403
        assert (await client.get("/v1/cases/F20260302-9999/similar")).status_code == 404


async def test_a_case_from_intake_is_found(settings: Settings) -> None:
    async with serve(settings) as running:
        client = running.client
        answer = await client.post(
            "/v1/feedback",
            json=web_form(
                "新买的X200洗衣机漏水严重，要求退款，电话13812345678", product_model="X200"
            ),
        )
        assert answer.status_code == 202, answer.text
        number = answer.json()["feedback_number"]
        await registered_row(client, number)
        # Indexed by the projection in the transaction that wrote the registration row.
        for q in ("漏水", "退款", "X200", "x200 洗衣机"):
            page = (await client.get("/v1/search", params={"q": q})).json()
            assert [i["feedback_number"] for i in page["items"]] == [number], q
            assert "13812345678" not in page["items"][0]["snippet"]


async def test_text_never_passes_for_a_filter_or_a_department(settings: Settings) -> None:
    # Filter values are lexemes in the document (`@dept:finance`): text that spells one is
    # only words, whoever writes it.
    spelled = {
        "F20260302-0201": ("退款 @dept:finance dept:finance @status:resolved ＠dept：finance @dept",
                           None, "after_sales", "queued", "phone", "billing", 0),
        "F20260302-0202": ("退款没有到账", None, "finance", "resolved", "phone", "billing", 0),
    }  # fmt: skip
    async with serve(settings, ("projections",)) as running:
        client = running.client
        insert_cases(settings.database_url, spelled)
        await index_all(settings.database_url)

        async def found(headers: dict[str, str] | None = None, **params: Any) -> set[str]:
            return numbers(await client.get("/v1/search", params=params, headers=headers))

        assert await found(q="退款") == {"F20260302-0201", "F20260302-0202"}
        assert await found(q="退款", department="finance") == {"F20260302-0202"}
        assert await found(q="退款", status="resolved") == {"F20260302-0202"}
        finance = running.as_staff("agent", ("finance",), agent_id="fin-ma")
        assert await found(finance, q="退款") == {"F20260302-0202"}
        assert await found(finance, q="@dept:finance") == set()
        # Those who see unrouted cases do not see a routed one that says `@dept`.
        triage = running.as_staff("supervisor", ("customer_service",))
        assert await found(triage, q="退款") == set()
        # Searching for the spelling finds the text, not the department.
        assert await found(q="@dept:finance") == {"F20260302-0201"}
        assert await found(q="dept finance", department="finance") == set()


async def test_filter_changes_keep_the_text_and_ranges_narrow_text(settings: Settings) -> None:
    async with serve(settings, ("projections",)) as running:
        client = running.client
        ids = insert_cases(settings.database_url, CASES)
        await index_all(settings.database_url)

        async def found(**params: Any) -> set[str]:
            return numbers(await client.get("/v1/search", params=params))

        async with await psycopg.AsyncConnection.connect(
            settings.database_url, autocommit=True
        ) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT * FROM registrations WHERE feedback_id = %s", (ids["F20260302-0007"],)
            )
            moved = await cursor.fetchone()
            assert moved is not None
            moved |= {"department": "logistics", "status": "resolved", "customer_tier": "vip"}
            # What a status change or a transfer writes: the filters only, text kept.
            await search.index_filters(conn, [moved])
            await cursor.execute(
                "SELECT document = %s::tsvector AS same, "
                "document @@ '''@dept:logistics'' & ''@status:resolved'''::tsquery AS moved "
                "FROM case_search WHERE feedback_id = %s",
                (search.case_document(moved), ids["F20260302-0007"]),
            )
            assert await cursor.fetchone() == {"same": True, "moved": True}

        assert await found(q="漏水", department="after_sales") == {"F20260302-0001"}
        assert await found(q="漏水", department="logistics", status="resolved", tier="vip") == {
            "F20260302-0007"
        }  # fmt: skip
        page = (await client.get("/v1/search", params={"q": "漏水 楼下", "tier": "vip"})).json()
        assert [i["feedback_number"] for i in page["items"]] == ["F20260302-0007"]
        assert page["items"][0]["rank"] > 0
        # Ranges with text: within a month, across months, open-ended, longer than months.
        assert await found(q="漏水", **{"from": "2026-03-02", "to": "2026-03-02"}) == {
            "F20260302-0001"
        }  # fmt: skip
        assert await found(q="漏水", **{"from": "2026-02-20", "to": "2026-03-03"}) == {
            "F20260302-0001"
        }  # fmt: skip
        assert await found(q="漏", **{"from": "2026-03-05T09:00:00+08:00"}) == {
            "F20260302-0007", "F20260302-0008"
        }  # fmt: skip
        assert await found(q="漏水", **{"from": "2025-01-01", "to": "2026-12-31"}) == {
            "F20260302-0001", "F20260302-0007", "F20260302-0008"
        }  # fmt: skip
