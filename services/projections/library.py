"""The case library (知识库, seed 001: 案例归档 … 更新至知识库): a resolved case published as
an entry (problem, cause, solution, product model) that agents search the way they search
the archive, and that the case view suggests for a new case with a similar description.

Entries are written by supervisors and heads through the API (who published, and when, is
kept on the entry: from the token, never from the body); their text is masked of contact
details like every other free text downstream of intake.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg.rows import dict_row

from services.access.roles import Actor
from services.projections.search import document_vector, query_terms, similar_query

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS library_entries (
        entry_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        source_feedback_number text NOT NULL UNIQUE,
        problem text NOT NULL,
        cause text NOT NULL,
        solution text NOT NULL,
        product_model text,
        category text,
        published_by text NOT NULL,
        published_role text NOT NULL,
        published_at timestamptz NOT NULL DEFAULT now(),
        document tsvector NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS library_entries_document ON library_entries USING gin (document)",
    "CREATE INDEX IF NOT EXISTS library_entries_model ON library_entries (lower(product_model))",
    "CREATE INDEX IF NOT EXISTS library_entries_category ON library_entries (category)",
]

# A case can be published once it has a result.
PUBLISHABLE = frozenset({"resolved", "confirmed", "closed", "archived"})

COLUMNS = (
    "entry_id, source_feedback_number, problem, cause, solution, product_model, category, "
    "published_by, published_role, published_at"
)


class AlreadyPublished(Exception):
    def __init__(self, entry_id: UUID) -> None:
        super().__init__(f"already published as entry {entry_id}")
        self.entry_id = entry_id


def entry_document(problem: str, cause: str, solution: str, product_model: str | None) -> str:
    return document_vector([(product_model, "A"), (problem, "B"), (cause, "C"), (solution, "D")])


async def publish(
    conn: Any,
    actor: Actor,
    source_feedback_number: str,
    problem: str,
    cause: str,
    solution: str,
    product_model: str | None,
    category: str | None,
) -> dict[str, Any]:
    """Insert an entry (texts already checked and masked); `AlreadyPublished` when the
    case has one."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"INSERT INTO library_entries (source_feedback_number, problem, cause, solution, "
            "product_model, category, published_by, published_role, document) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::tsvector) "
            f"ON CONFLICT (source_feedback_number) DO NOTHING RETURNING {COLUMNS}",
            (
                source_feedback_number,
                problem,
                cause,
                solution,
                product_model,
                category,
                actor.name,
                actor.role.value,
                entry_document(problem, cause, solution, product_model),
            ),
        )
        row = await cursor.fetchone()
        if row is not None:
            return dict(row)
        await cursor.execute(
            "SELECT entry_id FROM library_entries WHERE source_feedback_number = %s",
            (source_feedback_number,),
        )
        existing = await cursor.fetchone()
        assert existing is not None
        raise AlreadyPublished(existing["entry_id"])


async def search(
    conn: Any,
    q: str | None,
    product_model: str | None,
    category: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Entries matching the text (ranked) and filters; newest first without text."""
    return await _ranked(conn, query_terms(q), True, product_model, category, None, limit)


async def similar(
    conn: Any, description: str, product_model: str | None, exclude_number: str, limit: int
) -> list[dict[str, Any]]:
    """Entries sharing words with a case's description and product model, best first
    (an entry of the same product model ranks higher: its model is weighted A)."""
    tsquery = similar_query(product_model, description)
    if tsquery is None:
        return []
    return await _ranked(conn, tsquery, False, None, None, exclude_number, limit)


async def _ranked(
    conn: Any,
    tsquery: str | None,
    listing: bool,
    product_model: str | None,
    category: str | None,
    exclude_number: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    conditions = ["TRUE"]
    params: dict[str, Any] = {"tsquery": tsquery, "limit": limit}
    if tsquery:
        conditions.append("document @@ %(tsquery)s::tsquery")
    elif not listing:
        return []
    if product_model is not None:
        conditions.append("lower(product_model) = %(model)s")
        params["model"] = product_model.lower()
    if category is not None:
        conditions.append("category = %(category)s")
        params["category"] = category
    if exclude_number is not None:
        conditions.append("source_feedback_number <> %(exclude)s")
        params["exclude"] = exclude_number
    rank = "ts_rank(document, %(tsquery)s::tsquery, 1)" if tsquery else "NULL::real"
    order = "rank DESC, published_at DESC, entry_id" if tsquery else "published_at DESC, entry_id"
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT {COLUMNS}, {rank} AS rank FROM library_entries "
            f"WHERE {' AND '.join(conditions)} ORDER BY {order} LIMIT %(limit)s",
            params,
        )
        return [dict(row) for row in await cursor.fetchall()]
