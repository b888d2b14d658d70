"""Archive search: a full-text document per case in `case_search`, kept by the projection
(`index_cases`, in the transaction that writes the case's registration row).

PostgreSQL's text parsers do not segment Chinese (and behave by locale), and `pg_trgm`
cannot serve two-character words, so the lexemes are made here and stored without any
PostgreSQL parser involved (a tsvector literal of quoted lexemes with positions):

- every CJK bigram of each run of CJK characters, and the run's last character alone, so a
  search for any two-character word (漏水, 退款) or for one character (水) finds every text
  that has it;
- `rjieba` (jieba-rs) search-mode words of three characters or more (洗衣机); the shorter
  ones are bigrams already. They serve the similar-entry suggestions, whose query is
  words, not bigrams;
- lower-cased alphanumeric tokens after NFKC (full-width `Ｘ２００` is `x200`): `X200-Pro`
  is `x200` then `pro` at the next position.

Positions and weights (product model A, description B, the rest C) are kept because
`ts_rank` needs them: a positionless tsvector ranks every AND query at 1e-16.

A query (`query_terms`) ANDs the bigrams of each CJK run of two characters or more (so
"洗衣机漏水" finds the texts with that run, "洗衣机 漏水" those with both words anywhere),
matches a lone CJK character as a prefix (`水:*`: bigrams starting with it and run-final
characters), and ANDs the alphanumeric tokens. Lexemes are quoted (`'` doubled, `\\`
escaped) and the query is passed as a parameter cast to `tsquery`: no text of the user's
ever becomes SQL or tsquery syntax.

The document also holds the case's filter values as positionless lexemes (`filter_terms`:
`@status:queued`, `@dept:after_sales`, `@dept` for a case not routed yet, `@month:2026-11`
of the received time in UTC...), so a text search narrowed by filters or by the actor's
departments is one intersection in the GIN index, without reading the heap row of every
text match. They begin with `@` and hold `:`; text lexemes are made of letters and digits
only (`_TOKENS`), and a query's text becomes text lexemes only, so no customer's or
searcher's text can make or match one. Being positionless, they are left out of ranking
(`ts_filter` keeps the positioned, text lexemes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Literal
from uuid import UUID

from psycopg.rows import dict_row

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS case_search (
        feedback_id uuid PRIMARY KEY,
        feedback_number text NOT NULL,
        document tsvector NOT NULL,
        received_at timestamptz NOT NULL,
        channel text NOT NULL,
        feedback_type text,
        category text,
        department text,
        customer_tier text,
        product_model text,
        status text NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS case_search_document ON case_search USING gin (document)",
    "CREATE INDEX IF NOT EXISTS case_search_received ON case_search (received_at, feedback_id)",
    "CREATE INDEX IF NOT EXISTS case_search_number ON case_search (feedback_number)",
    *(
        f"CREATE INDEX IF NOT EXISTS case_search_{column} ON case_search ({column}, received_at)"
        for column in ("department", "channel", "status", "category", "feedback_type")
    ),
    "CREATE INDEX IF NOT EXISTS case_search_tier ON case_search (customer_tier, received_at)",
    "CREATE INDEX IF NOT EXISTS case_search_model "
    "ON case_search (lower(product_model), received_at)",
]

# Han (with extensions and compatibility ideographs), kana and hangul: no spaces between
# words, so they are indexed by bigrams.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f"
_TOKENS = re.compile(f"(?P<cjk>[{_CJK}]+)|(?P<word>(?:(?![{_CJK}])[^\\W_])+)")
# Longer "words" are hashes, encoded blobs or keyboard mashing: never searched for.
MAX_WORD_CHARS = 64
# PostgreSQL keeps positions up to 16383 and at most 256 per lexeme.
MAX_POSITION = 16383
MAX_POSITIONS_PER_LEXEME = 64
# A query ANDs at most this many lexemes (a pasted paragraph is not a search).
MAX_QUERY_LEXEMES = 32
MAX_SIMILAR_LEXEMES = 64

Weight = Literal["A", "B", "C", "D"]


@cache
def _segmenter() -> Any:
    """rjieba, loaded once on first use (its dictionary takes ~0.15 s; jieba's ~1.3 s)."""
    import rjieba

    rjieba.cut("预热")
    return rjieba


def normalized(text: str) -> str:
    """NFKC (full-width letters and digits to ASCII) and case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def _positioned(text: str, start: int) -> tuple[list[tuple[str, int]], int]:
    """The lexemes of a text with their positions from `start`, and the next position."""
    found: list[tuple[str, int]] = []
    position = start
    segmenter = None
    for match in _TOKENS.finditer(normalized(text)):
        run = match.group("cjk")
        if run:
            size = len(run)
            found.extend((run[i : i + 2], position + i) for i in range(size - 1))
            found.append((run[-1], position + size - 1))
            if size >= 3:
                segmenter = segmenter or _segmenter()
                found.extend(
                    (word, position + begin)
                    for word, begin, end in segmenter.tokenize(run, mode="search")
                    if end - begin >= 3
                )
            position += size
        else:
            word = match.group("word")
            if len(word) <= MAX_WORD_CHARS:
                found.append((word, position))
            position += 1
    return found, position


def document_terms(*texts: str | None) -> list[str]:
    """The distinct lexemes of the texts, in order of first appearance."""
    terms: dict[str, None] = {}
    position = 1
    for text in texts:
        if text:
            found, position = _positioned(text, position)
            terms.update(dict.fromkeys(lexeme for lexeme, _ in found))
    return list(terms)


def quoted(lexeme: str) -> str:
    """A lexeme as tsvector and tsquery input take it, whatever it holds."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def document_vector(fields: Sequence[tuple[str | None, Weight]]) -> str:
    """A tsvector literal (cast with `::tsvector`) of weighted texts, with positions."""
    positions: dict[str, list[str]] = {}
    position = 1
    for text, weight in fields:
        if not text:
            continue
        found, position = _positioned(text, position)
        position += 1  # fields are not adjacent
        for lexeme, at in found:
            kept = positions.setdefault(lexeme, [])
            if len(kept) < MAX_POSITIONS_PER_LEXEME:
                kept.append(f"{min(at, MAX_POSITION)}{weight}")
    return " ".join(f"{quoted(lexeme)}:{','.join(at)}" for lexeme, at in positions.items())


def query_terms(q: str | None) -> str | None:
    """A safe tsquery (pass it as a parameter cast to `::tsquery`) for what a person typed,
    or None when it holds nothing searchable (empty, spaces, punctuation only)."""
    operands: dict[str, None] = {}
    for match in _TOKENS.finditer(normalized(q or "")):
        run = match.group("cjk")
        if run and len(run) == 1:
            operands[quoted(run) + ":*"] = None
        elif run:
            operands.update(dict.fromkeys(quoted(run[i : i + 2]) for i in range(len(run) - 1)))
        else:
            operands[quoted(match.group("word")[:MAX_WORD_CHARS])] = None
    chosen = list(operands)[:MAX_QUERY_LEXEMES]
    return " & ".join(chosen) or None


# Words in nearly every feedback: they would make every entry look similar.
_COMMON_WORDS = (
    "客户 问题 一直 没有 已经 我们 你们 他们 这个 那个 什么 可以 但是 因为 所以 还是 就是 现在 "
    "时候 希望 需要 尽快 今天 昨天 然后 怎么 为什么 一个 自己 不是 如果 还有 非常 处理 反馈 "
    "the and for with that this have not but are was"
)
_COMMON = frozenset(_COMMON_WORDS.split())


def similar_query(*texts: str | None) -> str | None:
    """A tsquery ORing what the texts say, for suggesting similar entries: alphanumeric
    tokens, rjieba search-mode words of three characters or more (each its bigrams ANDed),
    then every CJK bigram (jieba may cut 漏水滴到 as 漏/水滴/到; the bigram 漏水 is still
    there). Words in nearly every feedback are left out; ts_rank orders the rest."""
    words: dict[str, None] = {}
    bigrams: dict[str, None] = {}
    for text in texts:
        for match in _TOKENS.finditer(normalized(text or "")):
            run = match.group("cjk")
            if not run:
                word = match.group("word")
                if 2 <= len(word) <= MAX_WORD_CHARS and word not in _COMMON:
                    words[quoted(word)] = None
                continue
            for word in _segmenter().cut_for_search(run):
                if len(word) >= 3 and word not in _COMMON:
                    parts = [quoted(word[i : i + 2]) for i in range(len(word) - 1)]
                    words[f"({' & '.join(parts)})"] = None
            for i in range(len(run) - 1):
                if run[i : i + 2] not in _COMMON:
                    bigrams[quoted(run[i : i + 2])] = None
    chosen = [*words, *(b for b in bigrams if b not in words)][:MAX_SIMILAR_LEXEMES]
    return " | ".join(chosen) or None


def snippet(text: str | None, q: str | None, width: int = 120) -> str:
    """About `width` characters of the text around the first thing the query matches
    (the start when nothing does)."""
    if not text:
        return ""
    folded = text.casefold()
    needles: list[str] = []
    for match in _TOKENS.finditer(normalized(q or "")):
        run = match.group("cjk")
        needles.append(run[:2] if run else match.group("word"))
    hits = [at for at in (folded.find(needle) for needle in needles) if at >= 0]
    begin = max(0, min(hits) - width // 4) if hits else 0
    shown = text[begin : begin + width]
    return ("…" if begin else "") + shown + ("…" if begin + width < len(text) else "")


# --- the table, written by the projection -------------------------------------------------

_COLUMNS = (
    "feedback_id",
    "feedback_number",
    "document",
    "received_at",
    "channel",
    "feedback_type",
    "category",
    "department",
    "customer_tier",
    "product_model",
    "status",
)
_UPSERT = (
    f"INSERT INTO case_search ({', '.join(_COLUMNS)}) "
    "VALUES (%s, %s, %s::tsvector, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (feedback_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[1:])
    # A case event that changes nothing searched (a clock, a note) writes nothing.
    + f" WHERE ({', '.join(f'case_search.{c}' for c in _COLUMNS[1:])}) "
    f"IS DISTINCT FROM ({', '.join(f'EXCLUDED.{c}' for c in _COLUMNS[1:])})"
)


# The registration fields the text lexemes are made of; the document's other lexemes are
# the filter values (`filter_terms`), which `index_filters` replaces without these.
TEXT_FIELDS = ("product_model", "description", "expectation", "customer_attempts")
# Filter values are cut to this many characters in their lexeme (codes are far shorter; a
# lexeme holds at most 2046 bytes). Values cut alike share a lexeme, so the search checks
# the column too for a filter value this long.
MAX_FILTER_CHARS = 200


def filter_term(key: str, value: str | None) -> str:
    """The lexeme of one filter value: `@key:value`, or `@key` for none. `@` and `:` are
    never in a text lexeme (letters and digits only), so no text can make or match one."""
    return f"@{key}" if value is None else f"@{key}:{value[:MAX_FILTER_CHARS]}"


def month_term(at: datetime) -> str:
    """The lexeme of the month (UTC) a case was received in: `@month:2026-11`."""
    utc = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    return filter_term("month", f"{utc.year:04d}-{utc.month:02d}")


def filter_terms(row: Mapping[str, Any]) -> list[str]:
    """The filter lexemes of one registration row. The product model is case-folded as
    its filter is; the department is there when none (unrouted cases, for scopes)."""
    model = row.get("product_model")
    terms = [
        filter_term("dept", row.get("department")),
        filter_term("status", row["status"]),
        filter_term("channel", row["channel"]),
        month_term(row["received_at"]),
    ]
    for key, value in (
        ("type", row.get("feedback_type")),
        ("category", row.get("category")),
        ("tier", row.get("customer_tier")),
        ("model", model and normalized(model)),
    ):
        if value is not None:
            terms.append(filter_term(key, value))
    return terms


def filter_vector(row: Mapping[str, Any]) -> str:
    """A tsvector literal of the filter lexemes of one registration row (positionless)."""
    return " ".join(quoted(term) for term in filter_terms(row))


def text_document(row: Mapping[str, Any]) -> str:
    """The tsvector literal of the text lexemes of one registration row (`TEXT_FIELDS`)."""
    return document_vector(
        [
            (row.get("product_model"), "A"),
            (row.get("description"), "B"),
            (row.get("expectation"), "C"),
            (row.get("customer_attempts"), "C"),
        ]
    )


def case_document(row: Mapping[str, Any]) -> str:
    """The tsvector literal of one registration row: text and filter lexemes."""
    text = text_document(row)
    return f"{text} {filter_vector(row)}" if text else filter_vector(row)


def _values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        row["feedback_id"],
        row["feedback_number"],
        case_document(row),
        row["received_at"],
        row["channel"],
        row.get("feedback_type"),
        row.get("category"),
        row.get("department"),
        row.get("customer_tier"),
        row.get("product_model"),
        row["status"],
    )


async def index_cases(conn: Any, rows: Sequence[Mapping[str, Any]], *, bulk: bool = False) -> None:
    """Upsert the search rows of these cases (registration-shaped dicts: the keys of
    `registrations.COLUMNS`), in the caller's transaction, in one `executemany` (`bulk`:
    through COPY, for a rebuild)."""
    if not rows:
        return
    if bulk:
        from services.projections.bulk import copy_upsert

        await copy_upsert(conn, "case_search", "feedback_id", _COLUMNS, [_values(r) for r in rows])
        return
    async with conn.cursor() as cursor:
        await cursor.executemany(_UPSERT, [_values(row) for row in rows])


async def index_case(conn: Any, row: Mapping[str, Any]) -> None:
    await index_cases(conn, [row])


# The filter columns; `index_filters` sets them and the document's filter lexemes.
_FILTER_COLUMNS = _COLUMNS[3:]
_FILTER_TYPES = ("timestamptz", *("text",) * (len(_FILTER_COLUMNS) - 1))
_REFILE = (
    "UPDATE case_search AS s SET "
    + ", ".join(f"{c} = v.{c}" for c in _FILTER_COLUMNS)
    # Text lexemes have positions, filter lexemes none: ts_filter keeps the text ones.
    + ", document = ts_filter(s.document, '{a,b,c,d}') || v.filters::tsvector "
    "FROM unnest(%s::uuid[], %s::text[], "
    + ", ".join(f"%s::{t}[]" for t in _FILTER_TYPES)
    + f") AS v(feedback_id, filters, {', '.join(_FILTER_COLUMNS)}) "
    "WHERE s.feedback_id = v.feedback_id "
    f"AND ({', '.join(f's.{c}' for c in _FILTER_COLUMNS)}) "
    f"IS DISTINCT FROM ({', '.join(f'v.{c}' for c in _FILTER_COLUMNS)})"
)


async def index_filters(conn: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """For cases whose `TEXT_FIELDS` are as last indexed (a status change, a transfer): set
    the filter columns and the document's filter lexemes, keeping its text lexemes, in one
    statement and without segmenting any text (what `index_cases` would write, cheaper).
    Cases without a search row are left alone."""
    if not rows:
        return
    columns: list[list[Any]] = [[r["feedback_id"] for r in rows], [filter_vector(r) for r in rows]]
    columns += [[r.get(c) for r in rows] for c in _FILTER_COLUMNS]
    await conn.execute(_REFILE, columns)


_REGISTRATION_COLUMNS = (
    "feedback_id, feedback_number, received_at, channel, feedback_type, category, department, "
    "customer_tier, product_model, status, description, expectation, customer_attempts"
)


async def reindex(conn: Any, feedback_ids: Sequence[UUID] | None = None, batch: int = 1000) -> int:
    """Index cases from the registration table (all, or these): a backfill, and what a
    rebuild of this table alone is. Returns how many were indexed."""
    done = 0
    after = UUID(int=0)
    while True:
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                f"SELECT {_REGISTRATION_COLUMNS} FROM registrations WHERE feedback_id > %s "
                "AND (%s::uuid[] IS NULL OR feedback_id = ANY(%s::uuid[])) "
                "ORDER BY feedback_id LIMIT %s",
                (after, feedback_ids, feedback_ids, batch),
            )
            rows = await cursor.fetchall()
        if not rows:
            return done
        await index_cases(conn, rows)
        done += len(rows)
        after = rows[-1]["feedback_id"]


# --- searching ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What a search is narrowed to, besides the text."""

    received_from: datetime | None = None
    received_to: datetime | None = None  # exclusive
    channel: str | None = None
    feedback_type: str | None = None
    category: str | None = None
    department: str | None = None
    customer_tier: str | None = None
    product_model: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class Scope:
    """Whose cases the actor sees: `departments` None for every department; cases not
    routed yet (no department) only with `unrouted`."""

    departments: tuple[str, ...] | None
    unrouted: bool = False


class BadCursor(ValueError):
    """A cursor that is not one this search gave out."""


def _fingerprint(tsquery: str | None, filters: Filters) -> str:
    described = json.dumps([tsquery, [str(v) for v in vars(filters).values()]])
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def encode_cursor(rank: float | None, received_at: datetime, feedback_id: UUID, of: str) -> str:
    body = json.dumps({"r": rank, "t": received_at.isoformat(), "i": str(feedback_id), "s": of})
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, of: str) -> tuple[float | None, datetime, UUID]:
    try:
        body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        rank = body["r"]
        if rank is not None and not isinstance(rank, int | float):
            raise TypeError("rank")
        position = (rank, datetime.fromisoformat(body["t"]), UUID(body["i"]))
        same = body["s"] == of
    except (ValueError, TypeError, KeyError, binascii.Error) as error:
        raise BadCursor("not a cursor this search gave out") from error
    if not same or position[1].tzinfo is None:
        raise BadCursor("the cursor belongs to another search (other text or filters)")
    return position


SEARCH_COLUMNS = (
    "feedback_id, feedback_number, received_at, channel, feedback_type, category, department, "
    "customer_tier, product_model, status"
)
# Text matching at most this many cases (with the filters) is ordered by ts_rank; text
# matching more (a common word: 漏水 is in 7% of cases) is ordered newest first, which the
# received-time index serves at once, where ranking would read and rank every match
# (~75,000 rows for 漏水 in 1,000,000 cases, several hundred ms).
RANKED_AT_MOST = 2000
# A received-time range spanning at most this many months (UTC) is narrowed by their
# lexemes too; a longer one by the column alone.
MONTH_TERMS_AT_MOST = 6
# Ranking leaves the filter lexemes out (positionless: ts_filter drops them), so a case
# ranks as its text alone does.
_RANK = "ts_rank(ts_filter(document, '{a,b,c,d}'), %(tsquery)s::tsquery, 1)"


def _months(begin: datetime, end: datetime) -> list[str] | None:
    """The month lexemes of received times in [begin, end), or None for too many."""
    first = begin.astimezone(UTC)
    last = (end - timedelta(microseconds=1)).astimezone(UTC)
    year, month = first.year, first.month
    months: list[str] = []
    while (year, month) <= (last.year, last.month):
        if len(months) == MONTH_TERMS_AT_MOST:
            return None
        months.append(filter_term("month", f"{year:04d}-{month:02d}"))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months or None


def filter_query(filters: Filters, scope: Scope) -> str | None:
    """A tsquery ANDing the filter lexemes of the filters and the scope (ORing the
    departments it sees), for ANDing with a text query: the GIN index then finds what
    matches both at once. None when nothing narrows. The search still checks the
    columns (a range's months are coarser than it, a cut value may be shared)."""
    operands = [
        quoted(filter_term(key, value))
        for key, value in (
            ("channel", filters.channel),
            ("type", filters.feedback_type),
            ("category", filters.category),
            ("dept", filters.department),
            ("tier", filters.customer_tier),
            ("model", filters.product_model and normalized(filters.product_model)),
            ("status", filters.status),
        )
        if value is not None
    ]
    if scope.departments:
        shown = [quoted(filter_term("dept", d)) for d in scope.departments]
        if scope.unrouted:
            shown.append(quoted(filter_term("dept", None)))
        operands.append(f"({' | '.join(shown)})")
    if filters.received_from and filters.received_to:
        months = _months(filters.received_from, filters.received_to)
        if months:
            operands.append(f"({' | '.join(quoted(m) for m in months)})")
    return " & ".join(operands) or None


Order = Literal["rank", "newest"]


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None
    order: Order


async def search(
    conn: Any,
    q: str | None,
    filters: Filters,
    scope: Scope,
    limit: int,
    cursor: str | None = None,
) -> Page:
    """One page of matching cases, best first (`ts_rank`, then newest) when the text
    with the filters and the scope matches at most RANKED_AT_MOST cases, else newest
    first; and the next page's cursor (None on the last). Later pages keep the order of
    the first."""
    tsquery = query_terms(q)
    of = _fingerprint(tsquery, filters)
    # Each condition on the columns, and whether the filter lexemes say exactly the same
    # (a ranked text search then leaves it to the GIN index: checking the column too would
    # only make the planner AND a btree bitmap of ~100,000 rows with it).
    conditions: list[tuple[str, bool]] = []
    params: dict[str, Any] = {"limit": limit + 1, "tsquery": tsquery}
    for column, key, value, lexeme in (
        ("received_at >=", "from", filters.received_from, False),
        ("received_at <", "to", filters.received_to, False),
        ("channel =", "channel", filters.channel, True),
        ("feedback_type =", "type", filters.feedback_type, True),
        ("category =", "category", filters.category, True),
        ("department =", "department", filters.department, True),
        ("customer_tier =", "tier", filters.customer_tier, True),
        (
            "lower(product_model) =",
            "model",
            filters.product_model and filters.product_model.lower(),
            False,  # the lexeme is NFKC and case-folded, PostgreSQL's lower() not
        ),
        ("status =", "status", filters.status, True),
    ):
        if value is not None:
            exact = lexeme and isinstance(value, str) and len(value) < MAX_FILTER_CHARS
            conditions.append((f"{column} %({key})s", exact))
            params[key] = value
    if scope.departments is not None:
        shown = "department = ANY(%(departments)s)"
        if len(scope.departments) == 1:
            # One department (an agent's): its (department, received_at) index can walk
            # newest first; `= ANY` of one cannot.
            shown = "department = %(department_seen)s"
            params["department_seen"] = scope.departments[0]
        exact = bool(scope.departments) and all(
            len(d) < MAX_FILTER_CHARS for d in scope.departments
        )
        conditions.append((f"({shown} OR department IS NULL)" if scope.unrouted else shown, exact))
        params["departments"] = list(scope.departments)
    every = [condition for condition, _ in conditions]
    # A text search: the text and the filter lexemes in one GIN condition, and only the
    # conditions the lexemes do not say exactly besides.
    indexed = list(every)
    if tsquery:
        narrowed = filter_query(filters, scope)
        params["match"] = f"({tsquery}) & {narrowed}" if narrowed else tsquery
        every.append("document @@ %(match)s::tsquery")
        indexed = [condition for condition, exact in conditions if not exact]
        indexed.append("document @@ %(match)s::tsquery")
    rank = _RANK if tsquery else "NULL::real"
    order = "rank DESC, received_at DESC, feedback_id DESC"
    rows: list[dict[str, Any]] | None = None
    async with conn.cursor(row_factory=dict_row) as db:
        if cursor:
            after_rank, params["after_at"], params["after_id"] = decode_cursor(cursor, of)
            ranked = after_rank is not None
            if ranked and not tsquery:
                raise BadCursor("the cursor belongs to another search")
            params["after_rank"] = after_rank
        elif tsquery:
            # The first page of a text search: at most RANKED_AT_MOST + 1 matches read
            # once, counted and ranked together; ranked when that is all of them.
            await db.execute(
                f"SELECT {SEARCH_COLUMNS}, {rank} AS rank, count(*) OVER () AS hits FROM "
                f"(SELECT {SEARCH_COLUMNS}, document FROM case_search "
                f"WHERE {' AND '.join(indexed)} LIMIT %(most)s) matched "
                f"ORDER BY {order} LIMIT %(limit)s",
                {**params, "most": RANKED_AT_MOST + 1},
            )
            rows = await db.fetchall()
            ranked = not rows or rows[0]["hits"] <= RANKED_AT_MOST
            for row in rows:
                del row["hits"]
            if not ranked:
                rows = None
        else:
            ranked = False
        if rows is None:
            if cursor and ranked:
                where = [
                    *indexed,
                    f"({rank}, received_at, feedback_id) "
                    "< (%(after_rank)s::real, %(after_at)s, %(after_id)s)",
                ]
            elif cursor:
                where = [*every, "(received_at, feedback_id) < (%(after_at)s, %(after_id)s)"]
            else:
                where = every
            # More than RANKED_AT_MOST matches: walking the received-time index (or a
            # filter's) newest first finds a page after at most about
            # limit * rows / RANKED_AT_MOST rows. The planner underestimates ANDed bigrams
            # (电池 & 池鼓 & 鼓包 are one word) and would read and sort every match from the
            # GIN index, or scan the table: not in this transaction.
            walk = bool(tsquery) and not ranked
            async with conn.transaction():
                if walk:
                    await db.execute(
                        "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off; "
                        "SET LOCAL enable_sort = off"
                    )
                await db.execute(
                    f"SELECT {SEARCH_COLUMNS}, {rank} AS rank FROM case_search "
                    f"WHERE {' AND '.join(where) or 'TRUE'} "
                    f"ORDER BY {order if ranked else order.removeprefix('rank DESC, ')} "
                    "LIMIT %(limit)s",
                    params,
                )
                rows = await db.fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        if rows:
            await db.execute(
                "SELECT feedback_id, description FROM registrations WHERE feedback_id = ANY(%s)",
                ([row["feedback_id"] for row in rows],),
            )
            descriptions = {r["feedback_id"]: r["description"] for r in await db.fetchall()}
            for row in rows:
                row["snippet"] = snippet(descriptions.get(row["feedback_id"]), q)
    last = rows[-1] if more else None
    following = (
        encode_cursor(
            last["rank"] if ranked else None, last["received_at"], last["feedback_id"], of
        )
        if last is not None
        else None
    )
    return Page(rows, following, "rank" if ranked else "newest")
