"""Batch import (`POST /v1/channels/batch/store|letter`) against hostile files, and the
staff-record endpoints against text and times outside the boundary rule, on the real
services: every file is answered with a per-row summary or a 422 with a reason, quickly,
and nothing it holds wedges what reads it afterwards."""

from __future__ import annotations

import asyncio
import io
import re
import struct
import threading
import time
import zipfile
from typing import Any

import httpx
import pytest
from openpyxl import Workbook

from services.common.settings import Settings
from tests.conftest import registered_row, serve, web_form

pytestmark = pytest.mark.integration
HEADER = "接收时间,客户名称/联系人,联系方式,产品型号/服务类型,问题描述,单号,接收人\n"
MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture
def batch_settings(settings: Settings) -> Settings:
    # Room for the larger files here, whatever the request guard's general limit is.
    return settings.model_copy(update={"max_request_bytes": 8 * 1024 * 1024})


def row(
    description: str, received: str = "2024-05-20 09:30", reference: str = "", **kw: str
) -> str:
    phone = kw.get("phone", "13812345678")
    return f"{received},张伟,{phone},吸尘器 V8,{description},{reference},门店-王\n"


async def upload(
    client: httpx.AsyncClient, data: bytes, name: str = "登记表.csv", channel: str = "store"
) -> httpx.Response:
    kind = XLSX_TYPE if name.endswith(".xlsx") else "text/csv"
    return await client.post(f"/v1/channels/batch/{channel}", files={"file": (name, data, kind)})


def workbook(rows: list[list[Any]]) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    for cells in rows:
        sheet.append(cells)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def with_parts(xlsx: bytes, parts: dict[str, bytes]) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(xlsx))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in source.namelist():
            archive.writestr(name, parts.pop(name, None) or source.read(name))
        for name, data in parts.items():
            archive.writestr(name, data)
    return out.getvalue()


def sheet(rows: str, dimension: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{MAIN_NS}">'
        f'<dimension ref="{dimension}"/><sheetData>{rows}</sheetData></worksheet>'
    ).encode()


def text_cell(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


def one_cell_at(row_number: int, dimension: str) -> bytes:
    """A few KB: a header, and one cell far down a sheet that claims to be huge."""
    header = "".join(
        text_cell(f"{col}1", name)
        for col, name in zip("ABCD", ["接收时间", "联系方式", "问题描述", "接收人"], strict=True)
    )
    rows = f'<row r="1">{header}</row><row r="{row_number}">{text_cell(f"C{row_number}", "远处的一格")}</row>'
    return with_parts(workbook([["x"]]), {"xl/worksheets/sheet1.xml": sheet(rows, dimension)})


def shared_string_bomb(size: int) -> bytes:
    """A workbook whose one shared string unpacks to `size` bytes (deflate: ~1000:1)."""
    strings = (
        f'<sst xmlns="{MAIN_NS}" count="1" uniqueCount="1"><si><t>'.encode()
        + b"A" * size
        + b"</t></si></sst>"
    )
    return with_parts(workbook([["问题描述"], ["x"]]), {"xl/sharedStrings.xml": strings})


def declaring(xlsx: bytes, member: str, size: int) -> bytes:
    """The workbook with `member`'s declared unpacked size changed (its data unchanged)."""
    data = bytearray(xlsx)
    with zipfile.ZipFile(io.BytesIO(xlsx)) as archive:
        local = archive.getinfo(member).header_offset
    central = data.find(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(member)] != member.encode():
        central = data.find(b"PK\x01\x02", central + 4)
        assert central > 0
    struct.pack_into("<I", data, central + 24, size)  # central directory entry
    struct.pack_into("<I", data, local + 22, size)  # local header
    return bytes(data)


def health_latencies(base_url: str, stop: threading.Event) -> list[float]:
    """How long /health takes, polled from another thread until `stop` (the server and
    the test share one event loop; timed from within it, a blocked loop would hide)."""
    latencies = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        while not stop.is_set():
            began = time.monotonic()
            assert client.get("/health").status_code == 200
            latencies.append(time.monotonic() - began)
            time.sleep(0.02)
    return latencies


async def test_a_nul_in_a_cell_is_registered_cleaned_and_the_original_kept(
    batch_settings: Settings,
) -> None:
    async with serve(batch_settings) as running:
        client = running.client
        data = (
            HEADER
            + row("吸尘器\x00使用三天后\x07无法启动")
            + row("扫地机器人无法回充", phone="13900001111")
        ).encode("gb18030")
        response = await upload(client, data)
        assert response.status_code == 200, response.text
        summary = response.json()
        assert [t["row"] for t in summary["taken"]] == [2, 3] and summary["refused"] == []
        (cleaned,) = summary["cleaned"]
        number = summary["taken"][0]["feedback_number"]
        assert cleaned["row"] == 2 and cleaned["feedback_number"] == number
        assert any("NUL" in reason for reason in cleaned["removed"])

        shown = await registered_row(client, number)
        assert shown["description"] == "吸尘器使用三天后无法启动"
        letters = (await client.get("/v1/deadletters", params={"all": True})).json()
        (letter,) = [x for x in letters if x["source"] == "batch/store"]
        assert letter["replay_result"] == f"registered cleaned as {number}"
        assert letter["metadata"]["row"] == "2"
        # Settled: not listed for replay.
        assert all(
            x["source"] != "batch/store" for x in (await client.get("/v1/deadletters")).json()
        )

        # The read side is not wedged: what comes afterwards becomes readable.
        later = await client.post("/v1/feedback", json=web_form("洗衣机外壳有明显划痕"))
        assert later.status_code == 202, later.text
        await registered_row(client, later.json()["feedback_number"])

        again = (await upload(client, data)).json()
        assert [t["duplicate"] for t in again["taken"]] == [True, True]
        letters = (await client.get("/v1/deadletters", params={"all": True})).json()
        assert len([x for x in letters if x["source"] == "batch/store"]) == 1


async def test_times_outside_the_window_refuse_their_rows(batch_settings: Settings) -> None:
    async with serve(batch_settings) as running:
        data = (
            HEADER
            + row("接收时间在公元一年", received="0001-01-01 00:00")
            + row("接收时间在2099年", received="2099-01-01 00:00")
            + row("正常的一行")
            + row("接收时间在9999年", received="9999-12-31 23:59")
        ).encode()
        book = workbook(
            [
                ["接收时间", "联系方式", "问题描述", "购买日期", "接收人"],
                ["2024-05-20 09:30", "13812345678", "购买日期太早", "1999-12-31", "信件-刘"],
                ["2024-05-20 09:30", "13812345678", "购买日期在未来", "2199-01-01", "信件-刘"],
                ["2024-05-20 09:30", "13812345678", "购买日期正常", "2024-01-01", "信件-刘"],
            ]
        )
        response = await upload(running.client, data)
        letters = await upload(running.client, book, "letters.xlsx", channel="letter")
    assert response.status_code == 200, response.text
    summary = response.json()
    assert [t["row"] for t in summary["taken"]] == [4]
    reasons = {r["row"]: " ".join(r["errors"]) for r in summary["refused"]}
    assert "before 2000-01-01" in reasons[2]
    assert "in the future" in reasons[3] and "in the future" in reasons[5]
    assert letters.status_code == 200, letters.text
    assert [t["row"] for t in letters.json()["taken"]] == [4]
    assert [r["row"] for r in letters.json()["refused"]] == [2, 3]
    assert all("purchase_date" in r["errors"][0] for r in letters.json()["refused"])


async def test_files_without_rows_are_refused(batch_settings: Settings) -> None:
    async with serve(batch_settings) as running:
        for data, name in [
            (b"", "empty.csv"),
            (b"", "empty.xlsx"),
            (HEADER.encode(), "header_only.csv"),
            (workbook([HEADER.strip().split(",")]), "header_only.xlsx"),
        ]:
            response = await upload(running.client, data, name)
            assert response.status_code == 422, (name, response.text)
            assert "the file has no rows" in response.json()["detail"]


async def test_hostile_files_are_refused_quickly_and_the_server_stays_responsive(
    batch_settings: Settings,
) -> None:
    hostile = {
        "shared_string_bomb.xlsx": (shared_string_bomb(20 * 1024 * 1024), "compressed"),
        "declares_1GiB.xlsx": (
            declaring(workbook([["问题描述"], ["x"]]), "xl/worksheets/sheet1.xml", 1 << 30),
            "would unpack to",
        ),
        "row_1000000.xlsx": (one_cell_at(1_000_000, "A1:XFD1000000"), "past row"),
        "garbage.xlsx": (bytes(range(256)) * 64, "not an XLSX file"),
        "zip_garbage.xlsx": (b"PK\x03\x04" + bytes(range(256)) * 64, "not an XLSX file"),
        "long_field.csv": ((HEADER + "x" * 200_000 + "\n").encode(), "field larger"),
        "commas.csv": ((HEADER + "," * 2_000_000 + "\n").encode(), "longer than"),
        "=cmd|' /C calc'!A0" + "名" * 500 + ".csv": (b"a,b\n" + b"\xff\x80" * 10, "neither UTF-8"),
    }
    # 10,000 rows to read and check (about a second of CPU here), every one refused for
    # its purchase date; two such uploads at once. Read on the event loop, each held
    # /health for about a second; off it, it keeps answering.
    all_refused = workbook(
        [["接收时间", "客户名称/联系人", "联系方式", "问题描述", "购买日期", "接收人"]]
        + [
            [
                "2024-05-20 09:30",
                f"客户{i}",
                f"139{i:08d}",
                f"第{i}条：无法启动",
                "1999-01-01",
                "王",
            ]
            for i in range(10_000)
        ]
    )
    async with serve(batch_settings) as running:
        client = running.client
        stop = threading.Event()
        polling = asyncio.create_task(asyncio.to_thread(health_latencies, running.base_url, stop))
        for name, (data, reason) in hostile.items():
            began = time.monotonic()
            response = await upload(client, data, name)
            took = time.monotonic() - began
            assert response.status_code == 422, (name, response.status_code, response.text[:300])
            detail = response.json()["detail"]
            assert reason in detail, (name, detail)
            assert "\x00" not in detail and len(detail) < 700
            assert took < 3, (name, took)

        # The dimension bomb: a 5 KB sheet claiming A1:XFD10000 with one cell at row 10000
        # is read in a moment, its one row reported.
        began = time.monotonic()
        response = await upload(client, one_cell_at(10_000, "A1:XFD10000"), "dimension.xlsx")
        assert time.monotonic() - began < 3
        assert response.status_code == 200, response.text
        assert [r["row"] for r in response.json()["refused"]] == [2]
        for response in await asyncio.gather(
            upload(client, all_refused, "all_refused.xlsx"),
            upload(client, all_refused, "all_refused_too.xlsx"),
        ):
            assert response.status_code == 200, response.text[:300]
            assert len(response.json()["refused"]) == 10_000 and response.json()["taken"] == []
        stop.set()
        latencies = await polling
    # Off the loop: ~0.1 s at worst here; read on the loop, each file held it ~1 s.
    assert latencies and max(latencies) < 0.5, max(latencies)


async def test_a_large_import_is_registered_in_order_and_fast(batch_settings: Settings) -> None:
    rows = [row(f"第{i}条：吸尘器使用三天后无法启动", phone=f"139{i:08d}") for i in range(3000)]
    rows[10] = row("单号重复的第一行", reference="R-1")
    rows[20] = row("没有接收时间的一行", received="")
    rows[2500] = row("单号重复的第二行", reference="R-1")
    data = (HEADER + "".join(rows)).encode()
    async with serve(batch_settings) as running:
        began = time.monotonic()
        response = await upload(running.client, data)
        took = time.monotonic() - began
        assert response.status_code == 200, response.text
        summary = response.json()
        taken = summary["taken"]
        assert summary["rows"] == 3000 and [r["row"] for r in summary["refused"]] == [22]
        assert [t["row"] for t in taken] == [n for n in range(2, 3002) if n != 22]
        numbers = [t["feedback_number"] for t in taken]
        assert len(set(numbers)) == len(numbers) - 1  # the repeated reference: one number
        first, repeat = (t for t in taken if t["row"] in (12, 2502))
        assert repeat["feedback_number"] == first["feedback_number"] and repeat["duplicate"]
        assert not first["duplicate"]
        await registered_row(running.client, taken[-1]["feedback_number"])
    # One at a time this took ~26 s per 1,000 rows; group commit makes it a few seconds.
    assert took < 15, took


CALLBACK = (
    b'{"callback_id":"cb-1","earlier_feedback_number":"F20240520-0001",'
    b'"customer":{"phone":"13812345678"},"description":%s}'
)


SUPPLEMENT = "/v1/feedback/F20240520-0001/supplements"
# pydantic itself refuses a lone surrogate in a stripped string (string_unicode); the
# boundary rule names it otherwise.
SURROGATE = "surrogate|not valid Unicode|unicode string"
OUTSIDE_THE_RULE = [
    ("/v1/channels/callback", CALLBACK % b'"a\\u0000b"', "NUL"),
    ("/v1/channels/callback", CALLBACK % b'"a\\ud800b"', SURROGATE),
    ("/v1/channels/callback", CALLBACK % b'"a\\u0007b"', r"U\+0007"),
    (SUPPLEMENT, b'{"channel":"phone","text":"a\\u0000"}', "NUL"),
    (SUPPLEMENT, b'{"channel":"phone","text":"a\\ud800"}', SURROGATE),
    (SUPPLEMENT, b'{"channel":"phone","product_model":"\\udfff","text":"x"}', SURROGATE),
    (
        SUPPLEMENT,
        b'{"channel":"phone","text":"x","received_at":"0001-01-01T00:00:00Z"}',
        "before 2000-01-01",
    ),
    (
        SUPPLEMENT,
        b'{"channel":"phone","text":"x","received_at":"9999-12-31T23:59:59+08:00"}',
        "in the future",
    ),
]


async def test_callbacks_and_supplements_refuse_what_the_boundary_rule_refuses(
    batch_settings: Settings,
) -> None:
    answers = []
    async with serve(batch_settings) as running:
        for path, body, reason in OUTSIDE_THE_RULE:
            response = await running.client.post(
                path, content=body, headers={"content-type": "application/json"}
            )
            try:
                response.json()  # valid JSON, whatever it echoes of the input
                valid = True
            except ValueError:
                valid = False
            answers.append((body, reason, response.status_code, valid, response.text[:400]))
    wrong = [a for a in answers if a[2] != 422 or not a[3] or not re.search(a[1], a[4])]
    assert not wrong, wrong
