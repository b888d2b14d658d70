"""Reading registration tables within bounds: hostile CSV and XLSX files are refused with
a reason (TableError) quickly, never with another exception; rows are checked one by one."""

from __future__ import annotations

import io
import struct
import time
import zipfile
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import Workbook

from contracts.codes import Channel
from services.intake.channels.records import plan_import, row_to_batch
from services.intake.channels.tables import (
    MAX_COLUMNS,
    MAX_ROWS,
    MAX_SHEET_ROWS,
    XLSX_MAX_MEMBER_BYTES,
    TableError,
    check_archive,
    header_flaws,
    read_table,
)

ZONE = ZoneInfo("Asia/Shanghai")
HEADER = "接收时间,客户名称/联系人,联系方式,问题描述,接收人\n"
ROW = "2024-05-20 09:30,张伟,13812345678,吸尘器使用三天后无法启动,门店-王\n"
MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"


def workbook(rows: list[list[object]]) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def with_parts(xlsx: bytes, parts: dict[str, bytes]) -> bytes:
    """The workbook with some parts replaced or added (hand-written XML)."""
    source = zipfile.ZipFile(io.BytesIO(xlsx))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in source.namelist():
            archive.writestr(name, parts.pop(name, None) or source.read(name))
        for name, data in parts.items():
            archive.writestr(name, data)
    return out.getvalue()


def sheet_xml(rows: str, dimension: str = "A1:B2") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{MAIN_NS}">'
        f'<dimension ref="{dimension}"/><sheetData>{rows}</sheetData></worksheet>'
    ).encode()


def cell(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


def hand_sheet(rows: str, dimension: str = "A1:B2") -> bytes:
    return with_parts(
        workbook([["placeholder"]]), {"xl/worksheets/sheet1.xml": sheet_xml(rows, dimension)}
    )


def test_gb18030_csv_and_xlsx_give_the_same_table() -> None:
    from_csv = read_table((HEADER + ROW).encode("gb18030"), "登记表.csv")
    from_xlsx = read_table(
        workbook([HEADER.strip().split(","), ROW.strip().split(",")]), "登记表.XLSX"
    )
    assert from_csv.header == from_xlsx.header == HEADER.strip().split(",")
    assert from_csv.rows == from_xlsx.rows == [ROW.strip().split(",")]


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"", "empty.csv"),
        (b"", "empty.xlsx"),
        (HEADER.encode(), "header.csv"),
        ((HEADER + ",,,,\n\n").encode(), "header_and_blank.csv"),
        (workbook([HEADER.strip().split(",")]), "header.xlsx"),
    ],
)
def test_a_file_without_rows_is_refused(data: bytes, name: str) -> None:
    with pytest.raises(TableError, match="the file has no rows"):
        read_table(data, name)


def test_a_nul_in_a_csv_cell_is_cleaned_and_reported() -> None:
    data = (HEADER + ROW.replace("无法启动", "无法\x00启动\x07")).encode()
    plan = plan_import(data, "nul.csv", Channel.store, ZONE)
    (row,) = plan.rows
    assert row.submission is not None and row.submission.description == "吸尘器使用三天后无法启动"
    assert row.removed == ["问题描述: contains a NUL character"]
    assert "\x00" in row.as_sent[3]  # the row as sent, for its dead letter


def test_a_control_character_in_a_header_is_cleaned() -> None:
    plan = plan_import(
        ("问题\x00描述," + HEADER + "x," + ROW).encode(), "h.csv", Channel.store, ZONE
    )
    assert plan.table.header[0] == "问题描述"
    assert header_flaws(plan.table) == ["column 1 header contains a NUL character"]


@pytest.mark.parametrize(
    ("received", "reason"),
    [
        ("0001-01-01 00:00", "before 2000-01-01"),
        ("1999-12-31 23:00", "before 2000-01-01"),
        ("2099-01-01 00:00", "in the future"),
        ("9999-12-31 23:59", "in the future"),
    ],
)
def test_a_received_time_outside_the_window_refuses_the_row(received: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        row_to_batch(
            {"接收时间": received, "联系方式": "13812345678", "问题描述": "x", "接收人": "王"},
            ZONE,
        )


def test_a_purchase_date_outside_the_window_refuses_the_row() -> None:
    for day in ("1900-01-01", "2199-01-01"):
        with pytest.raises(ValueError, match="purchase_date"):
            row_to_batch(
                {
                    "接收时间": "2024-05-20 09:30",
                    "联系方式": "13812345678",
                    "问题描述": "x",
                    "接收人": "王",
                    "购买日期": day,
                },
                ZONE,
            )


def test_a_local_time_of_a_moment_ago_is_not_in_the_future() -> None:
    # Read as UTC, a Shanghai time of a minute ago would be 8 hours ahead.
    local = (datetime.now(UTC) - timedelta(minutes=1)).astimezone(ZONE)
    row = row_to_batch(
        {
            "接收时间": local.strftime("%Y-%m-%d %H:%M"),
            "联系方式": "13812345678",
            "问题描述": "x",
            "接收人": "王",
        },
        ZONE,
    )
    assert row.received_at.utcoffset() == timedelta(hours=8)


def test_csv_cells_and_lines_beyond_the_bounds_are_refused() -> None:
    with pytest.raises(TableError, match="field larger than field limit"):
        read_table((HEADER + "x" * 200_000 + ",,,,\n").encode(), "long.csv")
    began = time.monotonic()
    with pytest.raises(TableError, match="longer than"):
        read_table((HEADER + "," * 5_000_000 + "\n").encode(), "commas.csv")
    assert time.monotonic() - began < 2


def test_more_rows_than_allowed_are_refused_while_reading() -> None:
    data = (HEADER + ROW * (MAX_ROWS + 1)).encode()
    with pytest.raises(TableError, match=f"more than {MAX_ROWS} rows"):
        read_table(data, "many.csv")
    assert len(read_table((HEADER + ROW * MAX_ROWS).encode(), "enough.csv").rows) == MAX_ROWS
    with pytest.raises(TableError, match=f"past row {MAX_SHEET_ROWS}"):
        read_table((HEADER + ROW + "\n" * MAX_SHEET_ROWS).encode(), "blank_lines.csv")


def test_utf16_and_undecodable_csv_are_refused_with_a_reason() -> None:
    with pytest.raises(TableError, match="UTF-16"):
        read_table((HEADER + ROW).encode("utf-16"), "unicode.csv")
    with pytest.raises(TableError, match="neither UTF-8 nor GB18030"):
        read_table(HEADER.encode() + b"\xff\xfe\xff\n", "broken.csv")


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04" + bytes(range(256)) * 4,
        b"\xd0\xcf\x11\xe0" + b"\x00" * 512,
        b"\x00" * 1000,
        b"not a zip at all",
    ],
)
def test_binary_garbage_named_xlsx_is_refused(data: bytes) -> None:
    with pytest.raises(TableError):
        read_table(data, "garbage.xlsx")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), xlsx=st.booleans())
def test_any_bytes_give_a_table_or_a_table_error(data: bytes, xlsx: bool) -> None:
    try:
        read_table(data, "fuzz.xlsx" if xlsx else "fuzz.csv")
    except TableError as error:
        assert len(str(error)) < 600


@settings(max_examples=100, deadline=None)
@given(cells=st.lists(st.text(max_size=40), min_size=1, max_size=8))
def test_any_csv_row_is_planned_or_refused_never_raises(cells: list[str]) -> None:
    import csv

    text = io.StringIO()
    csv.writer(text).writerow(["问题描述", "接收人", "联系方式", "接收时间", *cells[4:]])
    csv.writer(text).writerow(cells)
    try:
        plan = plan_import(
            text.getvalue().encode("utf-8", "surrogatepass"), "f.csv", Channel.letter, ZONE
        )
    except TableError:
        return
    for row in plan.rows:
        assert (row.submission is None) == bool(row.errors)


def test_a_declared_dimension_of_a_whole_sheet_costs_nothing() -> None:
    data = hand_sheet(
        f'<row r="1">{cell("A1", "问题描述")}</row><row r="10000">{cell("A10000", "v")}</row>',
        dimension="A1:XFD10000",
    )
    assert len(data) < 10_000
    began = time.monotonic()
    table = read_table(data, "dimension.xlsx")
    assert time.monotonic() - began < 1
    assert table.header == ["问题描述"] and table.rows == [["v"]]


def test_a_cell_at_row_a_million_is_refused_quickly() -> None:
    data = hand_sheet(
        f'<row r="1">{cell("A1", "问题描述")}</row><row r="1000000">{cell("A1000000", "v")}</row>',
        dimension="A1:XFD1000000",
    )
    began = time.monotonic()
    with pytest.raises(TableError, match=f"past row {MAX_SHEET_ROWS}"):
        read_table(data, "far.xlsx")
    assert time.monotonic() - began < 1


def test_a_header_wider_than_allowed_is_refused_and_far_cells_are_not_read() -> None:
    with pytest.raises(TableError, match=f"more than {MAX_COLUMNS} columns"):
        read_table(hand_sheet(f'<row r="1">{cell("A1", "a")}{cell("XFD1", "b")}</row>'), "w.xlsx")
    table = read_table(
        hand_sheet(
            f'<row r="1">{cell("A1", "问题描述")}</row>'
            + "".join(
                f'<row r="{n}">{cell(f"A{n}", "v")}{cell(f"XFD{n}", "far")}</row>'
                for n in range(2, 500)
            )
        ),
        "far_cells.xlsx",
    )
    assert table.rows == [["v"]] * 498


def test_xml_cannot_carry_nul_or_surrogates_so_such_a_workbook_is_unreadable() -> None:
    for text in ("a&#0;b", "a&#xD800;b", "a\x01b"):
        data = hand_sheet(
            f'<row r="1">{cell("A1", "问题描述")}</row><row r="2">{cell("A2", text)}</row>'
        )
        with pytest.raises(TableError, match="not a readable XLSX file"):
            read_table(data, "controls.xlsx")


def test_a_compressed_shared_string_bomb_is_refused_before_parsing() -> None:
    strings = (
        f'<sst xmlns="{MAIN_NS}" count="1" uniqueCount="1"><si><t>'.encode()
        + b"A" * (20 * 1024 * 1024)
        + b"</t></si></sst>"
    )
    data = with_parts(workbook([["问题描述"], ["x"]]), {"xl/sharedStrings.xml": strings})
    assert len(data) < 100_000
    began = time.monotonic()
    with pytest.raises(TableError, match="compressed"):
        read_table(data, "bomb.xlsx")
    assert time.monotonic() - began < 1


def test_declared_sizes_beyond_the_bounds_are_refused() -> None:
    def member(name: str, size: int, compressed: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name)
        info.file_size, info.compress_size = size, compressed
        return info

    with pytest.raises(TableError, match="per part"):
        check_archive([member("xl/sharedStrings.xml", 1 << 30, 1 << 26)])
    with pytest.raises(TableError, match="would unpack to"):
        check_archive([member(f"xl/worksheets/sheet{n}.xml", 60 << 20, 50 << 20) for n in range(4)])
    check_archive([member("xl/worksheets/sheet1.xml", XLSX_MAX_MEMBER_BYTES, 10 << 20)])


def test_a_zip_member_never_unpacks_beyond_its_declared_size() -> None:
    """What the archive check relies on: CPython's ZipExtFile stops at the declared size
    (and then fails the CRC check), however much the compressed data would give."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/sharedStrings.xml", b"0" * 10_000_000)
    data = bytearray(buffer.getvalue())
    central, local = data.find(b"PK\x01\x02"), data.find(b"PK\x03\x04")
    struct.pack_into("<I", data, central + 24, 1000)  # uncompressed size, central directory
    struct.pack_into("<I", data, local + 22, 1000)  # and local header
    with (
        zipfile.ZipFile(io.BytesIO(bytes(data))) as archive,
        archive.open("xl/sharedStrings.xml") as member,
    ):
        got = 0
        with pytest.raises(zipfile.BadZipFile, match="CRC"):
            while chunk := member.read(100):
                got += len(chunk)
        assert got <= 1000
