"""The text side of search (service/search_text.py), in-process: folding, words, the
lexemes stored for a body and the `tsquery` made of a query. What PostgreSQL makes of them
is tested in tests/test_search.py."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from service.marks import MARKS, UNICODE_VERSION
from service.refusals import Invalid
from service.search_text import MAX_QUERY_WORDS, parse_query, search_vector, words


def test_marks_are_unicodes() -> None:
    assert unicodedata.unidata_version == UNICODE_VERSION
    marks = {c for a, b in MARKS for c in range(a, b + 1)}
    every = {c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("M")}
    assert marks == every


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Qwen3.6 is out!", ["qwen3", "6", "is", "out"]),
        ("Données, ÉCOLE; naïve", ["donnees", "ecole", "naive"]),
        ("Straße", ["strasse"]),
        ("snake_case-words", ["snake", "case", "words"]),
        ("東京タワーに行きました。", ["東京", "タワー", "に", "行", "きました"]),
        ("ｶﾀｶﾅ", ["カタカナ"]),
        ("ภาษาไทย ง่าย", ["ภาษาไทย", "ง่าย"]),  # Thai marks stay in their words
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),
        ("abc北京def", ["abc", "北京", "def"]),
        ("x² ①", ["x2", "1"]),
    ],
)
def test_words(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_vector() -> None:
    assert search_vector("a b a") == "'a':1,3 'b':2"
    # Pairs of a spaceless word at consecutive positions; two apart between words.
    assert search_vector("東京 京都") == "'東京':1 '~東京':1 '京都':2 '~京都':4"
    assert search_vector("") == ""


def test_vector_bounds() -> None:
    many = search_vector("w " * 1000)
    assert many.count(",") == 255  # a lexeme keeps at most 256 positions
    long = search_vector("y" * 500)
    assert long == f"'{'y' * 100}':1"


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("qwen", "'qwen':*"),
        ("Données x", "'donnees':*"),
        ("北京", "( '~北京' )"),
        ("北京市", "( '~北京' <-> '~京市' )"),
        ("北", "'北':*"),
        ('"quick brown fox"', "( 'quick':* <-> 'brown':* <-> 'fox':* )"),
        ('"take a break"', "( 'take':* <2> 'break':* )"),
        ('"one" two', "'one':* & 'two':*"),
        ('"unclosed phrase', "( 'unclosed':* <-> 'phrase':* )"),
    ],
)
def test_query(q: str, expected: str) -> None:
    assert parse_query(q) == expected


@pytest.mark.parametrize("q", ["", "a", "!?", '"a b"', " ".join(["w"] * (MAX_QUERY_WORDS + 1))])
def test_query_refused(q: str) -> None:
    with pytest.raises(Invalid):
        parse_query(q)
