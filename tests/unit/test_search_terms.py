"""The lexemes of archive search (services/projections/search.py): what a text is indexed
as and what a query asks for, without PostgreSQL (tests/integration/test_search.py runs
them against it)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.projections.search import (
    Filters,
    Scope,
    case_document,
    document_terms,
    document_vector,
    filter_query,
    filter_terms,
    query_terms,
    quoted,
    similar_query,
    snippet,
)


def test_cjk_text_is_indexed_by_its_bigrams_and_its_last_character() -> None:
    assert document_terms("洗衣机漏水") == ["洗衣", "衣机", "机漏", "漏水", "水", "洗衣机"]
    # Two-character words are found wherever they stand, across jieba's word boundaries.
    terms = document_terms("申请退款三次都没有到账")
    assert "退款" in terms and "到账" in terms
    assert document_terms("水") == ["水"]


def test_jieba_search_mode_words_of_three_characters_or_more_are_added() -> None:
    terms = document_terms("打印机无法连接，提示驱动安装失败")
    assert "打印机" in terms
    # Shorter words are bigrams already; single characters are not words.
    assert terms.count("打印") == 1
    # Single characters only where a run ends ("接" before the comma, "败" at the end).
    assert [t for t in terms if len(t) == 1] == ["接", "败"]


def test_model_numbers_are_lower_cased_alphanumeric_tokens() -> None:
    assert document_terms("X200") == ["x200"]
    assert document_terms("型号X200-Pro的洗衣机") == [
        "型号", "号", "x200", "pro", "的洗", "洗衣", "衣机", "机", "洗衣机"
    ]  # fmt: skip
    # Full-width letters and digits are the same model.
    assert document_terms("Ｘ２００") == ["x200"]
    assert document_terms("x2000") == ["x2000"]  # another model, not x200


def test_mixed_text_and_punctuation() -> None:
    terms = document_terms("【投诉】X200洗衣机,漏水!!! 请尽快处理…… email: a***@example.com")
    assert {"投诉", "x200", "洗衣", "漏水", "email", "example", "com"} <= set(terms)
    assert not any(re.search(r"[^\w]", t) for t in terms)
    assert document_terms(None, "", "!!! …… ？？") == []


def test_overlong_tokens_are_not_indexed() -> None:
    assert document_terms("a" * 65 + " ok") == ["ok"]


def test_a_document_vector_has_weighted_positions() -> None:
    vector = document_vector([("X200", "A"), ("漏水了", "B")])
    assert vector == "'x200':1A '漏水':3B '水了':4B '了':5B"
    assert document_vector([(None, "A"), ("", "B")]) == ""


def test_query_of_a_two_character_word_and_a_longer_run() -> None:
    assert query_terms("漏水") == "'漏水'"
    assert query_terms("退款") == "'退款'"
    assert query_terms("洗衣机漏水") == "'洗衣' & '衣机' & '机漏' & '漏水'"
    assert query_terms("洗衣机 漏水") == "'洗衣' & '衣机' & '漏水'"


def test_a_single_cjk_character_is_a_prefix() -> None:
    # Every occurrence of a character starts a bigram or ends its run (indexed alone).
    assert query_terms("水") == "'水':*"


def test_model_numbers_in_queries() -> None:
    assert query_terms("X200") == "'x200'"
    assert query_terms("x200-PRO") == "'x200' & 'pro'"
    assert query_terms("X200 漏水") == "'x200' & '漏水'"


@pytest.mark.parametrize(
    "hostile",
    ["it's", "a\\b", "' | '", "x200') OR 1=1 --", "!(a & b) <-> c:*", "'\\'", "漏水'; DROP TABLE"],
)
def test_quotes_backslashes_and_operators_never_become_query_syntax(hostile: str) -> None:
    query = query_terms(hostile)
    if query is None:
        assert not re.search(r"\w", hostile)  # nothing searchable: no query at all
        return
    # Every operand is a quoted lexeme of letters, digits or CJK, joined by &.
    for operand in query.split(" & "):
        assert re.fullmatch(r"'\w+'(:\*)?", operand), operand


def test_quoting_doubles_quotes_and_escapes_backslashes() -> None:
    assert quoted("it's") == "'it''s'"
    assert quoted("a\\b") == "'a\\\\b'"


def test_empty_queries_ask_for_nothing() -> None:
    assert query_terms("") is None
    assert query_terms(None) is None
    assert query_terms("   ") is None
    assert query_terms("？！…—") is None


def test_a_long_query_is_bounded() -> None:
    assert query_terms(" ".join(f"w{i}" for i in range(100))).count("&") == 31  # type: ignore[union-attr]


def test_similar_query_ors_the_words() -> None:
    query = similar_query("X200", "洗衣机一直漏水，客户要求退款")
    assert query is not None
    operands = query.split(" | ")
    assert "'x200'" in operands and "'漏水'" in operands and "'退款'" in operands
    assert "('洗衣' & '衣机')" in operands
    assert "'客户'" not in operands  # in nearly every feedback
    assert similar_query("", None, "！") is None


def test_snippet_shows_the_match() -> None:
    text = "前面的内容" * 20 + "洗衣机漏水了" + "后面" * 100
    shown = snippet(text, "漏水")
    assert "漏水" in shown and shown.startswith("…") and shown.endswith("…")
    assert snippet("短文本", None) == "短文本"
    assert snippet(None, "x") == ""


ROW = {
    "feedback_id": None,
    "product_model": "X200-Pro",
    "description": "洗衣机漏水",
    "status": "queued",
    "channel": "web_form",
    "received_at": datetime(2026, 12, 1, 7, tzinfo=timezone(timedelta(hours=8))),
    "department": "after_sales",
    "feedback_type": "complaint",
    "category": "product_quality",
    "customer_tier": "vip",
}


def test_filter_values_are_lexemes_of_their_own() -> None:
    assert filter_terms(ROW) == [
        "@dept:after_sales", "@status:queued", "@channel:web_form",
        "@month:2026-11",  # in UTC
        "@type:complaint", "@category:product_quality", "@tier:vip", "@model:x200-pro",
    ]  # fmt: skip
    assert filter_terms(ROW | {"department": None, "category": None})[0] == "@dept"
    document = case_document(ROW)
    assert document.startswith("'x200':1A 'pro':2A '洗衣':4B")
    assert document.endswith("'@tier:vip' '@model:x200-pro'")


@pytest.mark.parametrize(
    "text",
    ["@dept:finance", "dept:finance", "＠dept：finance", "@status:resolved '@tier:vip'", "@dept",
     "@month:2026-11", "@model:x200-pro"],
)  # fmt: skip
def test_no_text_makes_or_asks_for_a_filter_lexeme(text: str) -> None:
    # Text lexemes are letters and digits (CJK included) only; filter lexemes hold @ and :.
    assert all(re.fullmatch(r"\w+", t) for t in document_terms(text))
    query = query_terms(text)
    assert query is not None and "@" not in query and ":" not in query.replace(":*", "")
    assert not set(document_terms(text)) & set(filter_terms(ROW))


def test_filters_and_scope_as_a_query() -> None:
    assert filter_query(Filters(), Scope(None)) is None
    assert (
        filter_query(
            Filters(status="queued", product_model="X200-PRO", customer_tier="vip"), Scope(None)
        )
        == "'@tier:vip' & '@model:x200-pro' & '@status:queued'"
    )
    # An agent's departments, and the unrouted cases for those who see them.
    assert filter_query(Filters(department="tech"), Scope(("tech", "it's"), unrouted=True)) == (
        "'@dept:tech' & ('@dept:tech' | '@dept:it''s' | '@dept')"
    )
    assert filter_query(Filters(), Scope(())) is None  # sees nothing: the column says so


def test_a_short_time_range_is_its_months() -> None:
    def months(begin: datetime, end: datetime) -> str | None:
        return filter_query(Filters(received_from=begin, received_to=end), Scope(None))

    day = datetime(2025, 12, 30, tzinfo=UTC)
    assert months(day, day + timedelta(days=1)) == "('@month:2025-12')"
    assert months(day, day + timedelta(days=7)) == "('@month:2025-12' | '@month:2026-01')"
    assert months(day, datetime(2026, 6, 1, tzinfo=UTC)) is not None  # six months
    assert months(day, datetime(2026, 6, 1, 0, 0, 1, tzinfo=UTC)) is None  # seven
    assert filter_query(Filters(received_from=day), Scope(None)) is None  # open-ended
