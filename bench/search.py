"""Archive search on 1,000,000 cases: p50/p99 of searches by filters and by Chinese full text.

PostgreSQL only. Synthetic cases (Chinese complaints about appliances and services with
model numbers, some English) are generated with a fixed seed; their registration rows (for
the snippets) and their `case_search` rows (the documents as `index_cases` makes them) are
loaded with COPY, then the indexes are built and the tables analysed. Each kind of search
runs through `search.search` as `GET /v1/search` does (first page of 20, snippets joined
from the registration table, and the next page by cursor for some), as quality (every
department) and as one department's agent. Target: p99 under 200 ms.

`python -m bench.search --cases 20000` is a quick run; `python -m bench search` runs the
full size.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.harness import percentile
from deploy.postgres_server import start_postgres
from services.common.database import apply_schema
from services.projections import registrations, search

CASES = 1_000_000
QUERIES_PER_KIND = 200
SEED = 11

PRODUCTS = [
    ("洗衣机", ["X200", "X200-Pro", "X2000", "W-80"]),
    ("冰箱", ["BCD-520", "R300", "R300-Max"]),
    ("空调", ["K-35", "KFR-72", "K-26"]),
    ("打印机", ["P100", "P100W", "LaserJet-M1"]),
    ("手机", ["M12", "M12-Pro", "M13"]),
    ("电视", ["TV55-Q", "TV65-Q"]),
    ("路由器", ["AX3000", "AX1800"]),
    ("扫地机器人", ["S7", "S7-Max"]),
    ("热水器", ["JSQ-16", "JSQ-20"]),
    ("耳机", ["B2", "B2-Lite"]),
]
PROBLEMS = [
    "漏水", "不制冷", "无法开机", "屏幕闪烁", "噪音很大", "连接失败", "充电很慢", "有异味",
    "频繁死机", "驱动安装失败", "遥控器失灵", "自动重启", "水管接口松动", "显示错误代码E4",
    "电池鼓包", "按键没反应", "WiFi断连", "加热不均匀", "漏电", "外壳开裂",
]  # fmt: skip
SERVICE = [
    "申请退款一直没有到账", "要求换货", "物流太慢，快递一周还没到", "客服态度很差",
    "安装师傅迟到两个小时", "维修后问题依旧", "发票开错了", "包裹外箱破损", "多扣了一笔服务费",
    "上门维修预约不上", "保修期内却要收费", "等了很久没人回复",
]  # fmt: skip
OPENERS = ["我家的", "上个月买的", "刚收到的", "用了半年的", "新买的", "公司采购的"]
ENGLISH = [
    "the screen flickers after the update", "refund not received yet", "water leaking from the bottom",
    "cannot connect to WiFi", "the delivery was late", "makes a loud noise at night",
]  # fmt: skip
DEPARTMENTS = ["product", "tech", "operations", "logistics", "customer_service", "after_sales", "finance"]  # fmt: skip
STATUSES = ["queued", "assigned", "accepted", "in_progress", "pending_info", "resolved",
            "confirmed", "closed", "archived", "reopened"]  # fmt: skip
CHANNELS = ["phone", "email", "web_chat", "web_form", "wechat", "weibo", "douyin", "store"]
CATEGORIES = ["product_function", "product_quality", "service_attitude", "delivery", "billing",
              "installation", "suggestion", "consultation"]  # fmt: skip
TYPES = ["complaint", "inquiry", "help", "suggestion", "praise"]

TEXT_QUERIES = ["漏水", "退款", "不制冷", "屏幕闪烁", "X200", "洗衣机 漏水", "驱动安装失败",
                "物流", "客服态度", "K-35 漏水", "refund", "漏", "保修期 收费", "电池鼓包"]  # fmt: skip


def description(rng: random.Random) -> tuple[str, str | None]:
    product, models = rng.choice(PRODUCTS)
    model = rng.choice(models) if rng.random() < 0.7 else None
    parts = [rng.choice(OPENERS) + product + (f"（型号{model}）" if model else "")]
    parts += rng.sample(PROBLEMS, rng.randint(1, 2))
    if rng.random() < 0.6:
        parts.append(rng.choice(SERVICE))
    if rng.random() < 0.1:
        parts.append(rng.choice(ENGLISH))
    if rng.random() < 0.3:
        parts.append(f"订单号{rng.randint(10**9, 10**10)}，希望尽快处理")
    return "，".join(parts) + "。", model


def generated(count: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(SEED)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    span_s = 2 * 365 * 86400
    for i in range(count):
        text, model = description(rng)
        at = start + timedelta(seconds=rng.randrange(span_s))
        yield {
            "feedback_id": uuid.UUID(int=rng.getrandbits(128)),
            "feedback_number": f"F{at:%Y%m%d}-{i:07d}",
            "received_at": at,
            "channel": rng.choice(CHANNELS),
            "feedback_type": rng.choice(TYPES),
            "category": rng.choice(CATEGORIES),
            "department": rng.choice(DEPARTMENTS) if rng.random() < 0.97 else None,
            "customer_tier": "vip" if rng.random() < 0.1 else "normal",
            "product_model": model,
            "status": rng.choice(STATUSES),
            "description": text,
            "expectation": "尽快解决" if rng.random() < 0.3 else None,
            "customer_attempts": None,
        }


def load(url: str, count: int) -> list[str]:
    tables = [s for s in registrations.SCHEMA + search.SCHEMA if "CREATE INDEX" not in s]
    indexes = [s for s in registrations.SCHEMA + search.SCHEMA if "CREATE INDEX" in s]
    apply_schema(url, tables)
    began = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        with cursor.copy(
            "COPY registrations (feedback_id, feedback_number, received_at, registered_at, "
            "channel, customer_ref, customer_tier, product_model, description, receiver, "
            "registration_late, status, last_version, updated_at, department, category, "
            "feedback_type, expectation) FROM STDIN"
        ) as copy:
            for row in generated(count):
                copy.write_row(
                    (row["feedback_id"], row["feedback_number"], row["received_at"],
                     row["received_at"], row["channel"], "客户-bench", row["customer_tier"],
                     row["product_model"], row["description"], "bench", False, row["status"], 1,
                     row["received_at"], row["department"], row["category"],
                     row["feedback_type"], row["expectation"])
                )  # fmt: skip
        registered_s = time.monotonic() - began
        with cursor.copy(
            "COPY case_search (feedback_id, feedback_number, document, received_at, channel, "
            "feedback_type, category, department, customer_tier, product_model, status) "
            "FROM STDIN"
        ) as copy:
            for row in generated(count):
                copy.write_row(
                    (row["feedback_id"], row["feedback_number"], search.case_document(row),
                     row["received_at"], row["channel"], row["feedback_type"], row["category"],
                     row["department"], row["customer_tier"], row["product_model"],
                     row["status"])
                )  # fmt: skip
        documents_s = time.monotonic() - began - registered_s
        conn.execute("SET maintenance_work_mem = '1GB'")
        for statement in indexes:
            conn.execute(statement.encode())
        # What autovacuum does to a freshly loaded table (hint bits, visibility map).
        conn.execute("VACUUM (ANALYZE) registrations")
        conn.execute("VACUUM (ANALYZE) case_search")
        size = conn.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('case_search')), "
            "pg_size_pretty(pg_relation_size('case_search_document'))"
        ).fetchone()
    assert size is not None
    total_s = time.monotonic() - began
    return [
        f"{count:,} cases: registration rows COPY {registered_s:.0f} s; documents made and "
        f"COPY {documents_s:.0f} s ({documents_s / count * 1e6:.0f} us a case); indexes and "
        f"VACUUM ANALYZE {total_s - registered_s - documents_s:.0f} s",
        f"case_search {size[0]} with indexes, of which the GIN index {size[1]}",
    ]


def searches(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    def day() -> datetime:
        return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(700))

    def filters() -> dict[str, Any]:
        choice = rng.randrange(6)
        if choice == 0:
            return {"department": rng.choice(DEPARTMENTS), "status": rng.choice(STATUSES)}
        if choice == 1:
            begin = day()
            return {"channel": rng.choice(CHANNELS), "received_from": begin,
                    "received_to": begin + timedelta(days=7)}  # fmt: skip
        if choice == 2:
            return {"product_model": rng.choice(rng.choice(PRODUCTS)[1])}
        if choice == 3:
            return {"category": rng.choice(CATEGORIES), "customer_tier": "vip"}
        if choice == 4:
            return {"feedback_type": rng.choice(TYPES), "status": rng.choice(STATUSES)}
        return {}

    return {
        "filters": [{"q": None, **filters()} for _ in range(QUERIES_PER_KIND)],
        "Chinese full text": [{"q": rng.choice(TEXT_QUERIES)} for _ in range(QUERIES_PER_KIND)],
        "full text + filters": [
            {"q": rng.choice(TEXT_QUERIES), **filters()} for _ in range(QUERIES_PER_KIND)
        ],
    }


async def measure(url: str) -> list[str]:
    lines: list[str] = []
    rng = random.Random(SEED + 1)
    scopes = {
        "quality": search.Scope(None),
        "agent (after_sales)": search.Scope(("after_sales",)),
    }
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for scope_name, scope in scopes.items():
            for kind, runs in searches(rng).items():
                latencies: list[float] = []
                pages: list[float] = []
                matched = ranked = 0
                for params in runs:
                    q = params.pop("q")
                    wanted = search.Filters(**params)
                    began = time.perf_counter()
                    page = await search.search(conn, q, wanted, scope, 20)
                    latencies.append((time.perf_counter() - began) * 1000)
                    matched += bool(page.rows)
                    ranked += page.order == "rank"
                    if page.next_cursor and len(pages) < QUERIES_PER_KIND // 4:
                        began = time.perf_counter()
                        await search.search(conn, q, wanted, scope, 20, page.next_cursor)
                        pages.append((time.perf_counter() - began) * 1000)
                line = (
                    f"{scope_name}, {kind}: p50 {percentile(latencies, 0.5):.1f} ms, "
                    f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms "
                    f"({len(latencies)} searches, {matched} with results, {ranked} ordered by rank)"
                )
                if pages:
                    line += f"; next page p50 {percentile(pages, 0.5):.1f} ms, p99 {percentile(pages, 0.99):.1f} ms"
                lines.append(line)
        for q in ("漏水", "退款", "X200", "漏"):
            tsquery = search.query_terms(q)
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM case_search WHERE document @@ %s::tsquery", (tsquery,)
                )
            ).fetchone()
            assert row is not None
            lines.append(f"'{q}' matches {row[0]:,} cases")
    return lines


def run(cases: int = CASES) -> list[str]:
    server = start_postgres()
    try:
        lines = load(server.url, cases)
        lines += asyncio.run(measure(server.url))
    finally:
        server.stop()
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=CASES)
    for line in run(parser.parse_args().cases):
        print(line, flush=True)
