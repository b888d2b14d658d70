"""Reading registration tables (CSV or XLSX) that staff upload, within fixed bounds.

A table is a header row and up to MAX_ROWS rows below it. Whatever the file holds, reading
it either returns a `Table` or raises `TableError` with a short reason meant for the
person who sent the file; the work done is bounded by the file's size and these limits:

- CSV: UTF-8 or GB18030 text; a physical line is at most MAX_LINE_CHARS characters and a
  cell at most the csv module's default field limit (131,072 characters).
- XLSX: before openpyxl touches the archive, its zip directory is checked: a member
  declaring more than XLSX_MAX_MEMBER_BYTES, all of them more than XLSX_MAX_TOTAL_BYTES, or
  a large member compressed more than XLSX_MAX_RATIO to one, is refused. Reading a member
  never yields more than its declared size (CPython's ZipExtFile stops there and then
  fails the CRC check), so declared sizes bound the XML parsed. The sheet's declared
  dimensions are ignored (`reset_dimensions`): read-only mode would otherwise pad every
  row to whatever width the file claims.
- Both: the table may not reach past row MAX_SHEET_ROWS (counting blank rows), and a value
  in a header column beyond MAX_COLUMNS is refused.

This is synchronous and CPU-bound: callers run it off the event loop.
"""

from __future__ import annotations

import codecs
import csv
import io
import zipfile
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.boundary import clean_text, excerpt, text_flaw

MAX_ROWS = 10_000
MAX_COLUMNS = 64
# The header, MAX_ROWS rows and as many blank ones: a table reaching further is refused
# as soon as the reading gets there (a lone cell at row 1,000,000 costs nothing more).
MAX_SHEET_ROWS = 2 * MAX_ROWS + 1
MAX_LINE_CHARS = 1_000_000
XLSX_MAX_TOTAL_BYTES = 200 * 1024 * 1024
XLSX_MAX_MEMBER_BYTES = 100 * 1024 * 1024
XLSX_MAX_MEMBERS = 1_000
# Spreadsheet XML compresses ~5-30:1; deflate tops out near 1030:1 (a zip bomb's ratio).
XLSX_MAX_RATIO = 200
_RATIO_CHECKED_ABOVE = 1024 * 1024
NO_ROWS = "the file has no rows"


class TableError(ValueError):
    """The file cannot be read as a registration table; the message says why, briefly."""


@dataclass(frozen=True)
class Table:
    """The header (cleaned of control characters, stripped), the header as sent, and the
    rows that hold any value, in file order, each as sent (cells past the header dropped)."""

    header: list[str]
    header_as_sent: list[Any]
    rows: list[list[Any]]


def read_table(data: bytes, filename: str) -> Table:
    """The table in a CSV (UTF-8 or GB18030) or XLSX file; TableError if there is none."""
    if not data:
        raise TableError(f"{NO_ROWS} (it is empty)")
    if filename.lower().endswith(".xlsx"):
        return _xlsx_table(data)
    return _collect(_csv_records(data))


def _collect(records: Iterable[Sequence[Any]]) -> Table:
    """The header and the non-blank rows, refusing tables beyond the limits while reading."""
    header_as_sent: list[Any] | None = None
    rows: list[list[Any]] = []
    for number, cells in enumerate(records, start=1):
        if number > MAX_SHEET_ROWS:
            raise TableError(
                f"the table goes on past row {MAX_SHEET_ROWS}; at most {MAX_ROWS} rows "
                "(delete the empty rows below the table)"
            )
        if header_as_sent is None:
            header_as_sent = _header_cells(cells)
            continue
        if all(_blank(cell) for cell in cells):
            continue
        if len(rows) == MAX_ROWS:
            raise TableError(f"more than {MAX_ROWS} rows (row {number})")
        rows.append(list(cells[: len(header_as_sent)]))
    if header_as_sent is None or not rows:
        raise TableError(NO_ROWS)
    return Table([_header_name(h) for h in header_as_sent], header_as_sent, rows)


def _header_cells(cells: Sequence[Any]) -> list[Any]:
    width = len(cells)
    while width and _blank(cells[width - 1]):
        width -= 1
    if width > MAX_COLUMNS:
        raise TableError(f"more than {MAX_COLUMNS} columns")
    return list(cells[:width])


def _header_name(cell: Any) -> str:
    return clean_text("" if cell is None else str(cell)).strip()


def _blank(cell: Any) -> bool:
    return cell is None or cell == ""


def header_flaws(table: Table) -> list[str]:
    """What cleaning removed from the header, per column."""
    found = []
    for column, cell in enumerate(table.header_as_sent, start=1):
        flaw = text_flaw(cell) if isinstance(cell, str) else None
        if flaw:
            found.append(f"column {column} header {flaw}")
    return found


# -- CSV ------------------------------------------------------------------------------


def _csv_records(data: bytes) -> Iterator[list[str]]:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise TableError("UTF-16 text is not read; save the table as CSV (UTF-8) or XLSX")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError as error:
            raise TableError(
                f"neither UTF-8 nor GB18030 text (byte {error.start}); "
                "save the table as CSV (UTF-8) or XLSX"
            ) from error
    reader = csv.reader(_bounded_lines(text))
    try:
        yield from reader
    except csv.Error as error:
        # The default field limit (131,072 characters) is kept: a description is at most
        # 5,000, and the limit is process-wide.
        raise TableError(
            f"not a readable CSV file (record {reader.line_num}: {excerpt(str(error), 200)})"
        ) from error


def _bounded_lines(text: str) -> Iterator[str]:
    # newline="": the csv module handles \r\n and quoted line breaks itself.
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        if len(line) > MAX_LINE_CHARS:
            raise TableError(f"line {number} is longer than {MAX_LINE_CHARS} characters")
        yield line


# -- XLSX -----------------------------------------------------------------------------


def _xlsx_table(data: bytes) -> Table:
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise TableError(
            "an old .xls or a password-protected workbook; save it as .xlsx without a password"
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as error:
        raise TableError(
            f"not an XLSX file (not a zip archive: {excerpt(str(error), 200)})"
        ) from error
    with archive:
        check_archive(archive.infolist())
    records = _xlsx_records(data)
    try:
        return _collect(records)
    except TableError:
        raise
    except Exception as error:
        # openpyxl, zipfile and the XML parser raise many kinds on malformed files; any of
        # them means the file cannot be read.
        raise TableError(
            f"not a readable XLSX file ({type(error).__name__}: {excerpt(str(error), 200)})"
        ) from error
    finally:
        records.close()  # closes the workbook's archive now, not when collected


def check_archive(members: list[zipfile.ZipInfo]) -> None:
    """Refuse an archive whose declared contents are beyond the bounds (a zip bomb)."""
    if len(members) > XLSX_MAX_MEMBERS:
        raise TableError(f"not a registration table: {len(members)} files in the archive")
    total = 0
    for member in members:
        name = excerpt(member.filename, 80)
        if member.file_size > XLSX_MAX_MEMBER_BYTES:
            raise TableError(
                f"{name} would unpack to {member.file_size} bytes "
                f"(at most {XLSX_MAX_MEMBER_BYTES} per part)"
            )
        if member.file_size > _RATIO_CHECKED_ABOVE and member.file_size > XLSX_MAX_RATIO * max(
            member.compress_size, 1
        ):
            raise TableError(
                f"{name} is compressed {member.file_size // max(member.compress_size, 1)}:1 "
                f"(at most {XLSX_MAX_RATIO}:1); not a spreadsheet a person wrote"
            )
        total += member.file_size
    if total > XLSX_MAX_TOTAL_BYTES:
        raise TableError(f"would unpack to {total} bytes (at most {XLSX_MAX_TOTAL_BYTES})")


def _xlsx_records(data: bytes) -> Generator[Sequence[Any], None, None]:
    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        if not book.worksheets:
            raise TableError("the workbook has no worksheet")
        sheet = book.worksheets[0]
        # The file's <dimension> may claim A1:XFD1048576; the rows themselves are the truth.
        sheet.reset_dimensions()
        # The header at its own width (once); the rows only as wide as a header may be, so
        # that no row is padded or copied to more than MAX_COLUMNS cells.
        yield from sheet.iter_rows(min_row=1, max_row=1, values_only=True)
        yield from sheet.iter_rows(min_row=2, max_col=MAX_COLUMNS, values_only=True)
    finally:
        book.close()
