"""The text side of search (PROTOCOL.md, `GET /api/search`): bodies and queries folded into
words, the lexemes stored for a body, the `tsquery` for a query. service/search.py reads.

How text is indexed. Python folds each body (Unicode NFKD, the accents of the combining
diacritical blocks dropped, NFC, case folded) and cuts it into words: runs of letters, digits
and marks, split where the script changes. The writer stores the result as a `tsvector`
literal in `messages.search` (service/sql/post_messages.sql: new messages, edits; a delete
sets it to NULL, so a deleted message's words leave the database with its body). One GIN
index of the lexemes (ix_messages_search) serves every query (service/search.py says how
it meets the caller's rooms). The vector holds:

- each word at its position, as a lexeme: a query word matches as a prefix (`'qwen':*`), a
  quoted phrase as words at consecutive positions (`<->`);
- for words of the scripts written without spaces (Han, Hiragana, Katakana, Thai), each pair
  of consecutive characters, marked with a leading `~` (no word starts with one, so a prefix
  query never meets a pair), at its character position: a query word of n >= 2 such
  characters is its n - 1 pairs at consecutive positions, which finds it wherever it occurs
  contiguously, a two-character word as well as a long one.

Why not what the database offers: under a C locale (a `--no-locale` cluster) `lower()`,
`to_tsvector` and `pg_trgm` treat non-ASCII letters as ASCII-less symbols (no case folding,
no trigrams of CJK text); a trigram index cannot serve a two-character pattern; `unaccent()`
is not immutable, so no index expression can use it. Folding in Python and handing PostgreSQL
finished lexemes (a `tsvector` literal, a `tsquery` literal: neither runs a parser or a
dictionary) makes the index independent of the cluster's locale and of its dictionaries,
and the same code folds bodies and queries, so they cannot disagree. bench/search.py
measures it at 1M and 10M messages (README, Search, says which alternatives were tried).
"""

from __future__ import annotations

import itertools
import re
import unicodedata

from .marks import MARKS
from .refusals import Invalid

# Bounds on what one query can make the server do.
MAX_QUERY_CHARS = 256
MAX_QUERY_WORDS = 16
# A lexeme holds at most this many characters of a word (PostgreSQL refuses lexemes over
# 2 KiB); a longer query word is cut the same way, so it still matches as a prefix.
WORD_CHARS = 100
# The pairs of a message's first PAIRED_CHARS characters of scripts without spaces are
# indexed, no more: every pair is a key of the GIN index, and a 3,000-character message of
# random Han characters cost PostgreSQL 15 ms of CPU to store with all of its pairs against
# 1 ms without them. Chat messages are far shorter; a substring further into a longer one
# is not found (README, Search). The cap bounds what one message can cost.
PAIRED_CHARS = 1000
# tsvector positions stop at 16383, and a lexeme keeps at most 256 of them.
_MAX_POS = 16383
_MAX_POSITIONS = 256
PAIR = "~"

_HAN = "\u3005\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_HIRAGANA = "\u3041-\u3096\u309d-\u309f"
_KATAKANA = "\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff"
_THAI = "\u0e01-\u0e3a\u0e40-\u0e4e\u0e50-\u0e59"
_SPACELESS = _HAN + _HIRAGANA + _KATAKANA + _THAI
# The accents dropped: the combining diacritical blocks (Latin, Greek, Cyrillic accents).
# Other marks (Thai vowels, Devanagari signs, kana voicing) are parts of their letters.
_ACCENTS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


# Every combining mark, as a character class body.
_MARKS = "".join(f"{chr(a)}-{chr(b)}" for a, b in MARKS)

_WORD = re.compile(
    f"[{_HAN}]+|[{_HIRAGANA}]+|[{_KATAKANA}]+|[{_THAI}]+"
    f"|(?:(?![{_SPACELESS}])(?:[^\\W_]|[{_MARKS}]))+"
)
_ASCII_WORD = re.compile("[a-z0-9]+")
_IS_SPACELESS = re.compile(f"[{_SPACELESS}]")


def words(value: str) -> list[str]:
    """`value` folded (accents dropped, case folded, compatibility forms unified) and cut into
    words: runs of letters, digits and marks, split where the script changes."""
    if value.isascii():
        return _ASCII_WORD.findall(value.lower())
    folded = _ACCENTS.sub("", unicodedata.normalize("NFKD", value))
    return _WORD.findall(unicodedata.normalize("NFC", folded).casefold())


def _spaceless(word: str) -> bool:
    return _IS_SPACELESS.match(word) is not None


def _lexeme(value: str) -> str:
    # Words hold no quote or backslash: they are letters, digits and marks.
    return f"'{value}'"


def search_vector(body: str) -> str:
    """The `tsvector` literal stored for `body` (see the module's docstring)."""
    positions: dict[str, list[int]] = {}
    found = words(body)
    if body.isascii() and len(found) < _MAX_POS:  # the common case, made quick
        for n, word in enumerate(found, 1):
            positions.setdefault(word[:WORD_CHARS], []).append(n)
        return _literal(positions)
    char = 1  # pairs' positions: one apart within a word, two between words
    paired = 0  # characters whose pairs are indexed so far (PAIRED_CHARS at most)
    for n, word in enumerate(found, 1):
        _add(positions, word[:WORD_CHARS], n)
        if _spaceless(word) and paired < PAIRED_CHARS:
            # The hot loop of long CJK text: `_add` inlined. Positions only grow, so a
            # repeat can only be the last one.
            count = min(len(word), PAIRED_CHARS - paired)
            paired += count
            for i in range(count - 1):
                pos = char + i
                if pos > _MAX_POS:
                    pos = _MAX_POS
                at = positions.get(PAIR + word[i : i + 2])
                if at is None:
                    positions[PAIR + word[i : i + 2]] = [pos]
                elif at[-1] != pos:
                    at.append(pos)
            char += len(word) + 1
    return _literal(positions)


def _literal(positions: dict[str, list[int]]) -> str:
    # Most words occur once in a message: their position is written without a join.
    return " ".join(
        [
            f"{_lexeme(k)}:{v[0]}"
            if len(v) == 1
            else f"{_lexeme(k)}:{','.join(map(str, v[:_MAX_POSITIONS]))}"
            for k, v in positions.items()
        ]
    )


def _add(positions: dict[str, list[int]], lexeme: str, pos: int) -> None:
    at = positions.setdefault(lexeme, [])
    pos = min(pos, _MAX_POS)
    if not at or at[-1] != pos:
        at.append(pos)


def _pairs(word: str) -> str:
    return " <-> ".join(_lexeme(PAIR + word[i : i + 2]) for i in range(len(word) - 1))


def _term(word: str) -> str | None:
    """A query word alone: contiguous in a spaceless script, else a prefix; None when it is
    one character outside those scripts (ignored)."""
    if _spaceless(word) and len(word) >= 2:
        return f"( {_pairs(word)} )"
    if len(word) < 2 and not _spaceless(word):
        return None
    return _lexeme(word[:WORD_CHARS]) + ":*"


def _phrase(found: list[str]) -> str | None:
    """Words at consecutive positions, each a prefix; ignored words keep their place."""
    kept = [(i, w) for i, w in enumerate(found) if len(w) >= 2 or _spaceless(w)]
    if len(kept) <= 1:
        return _term(kept[0][1]) if kept else None
    parts = [_lexeme(kept[0][1][:WORD_CHARS]) + ":*"]
    for (before, _), (at, word) in itertools.pairwise(kept):
        distance = "<->" if at - before == 1 else f"<{at - before}>"
        parts.append(f"{distance} {_lexeme(word[:WORD_CHARS])}:*")
    return "( " + " ".join(parts) + " )"


def parse_query(q: str) -> str:
    """The `tsquery` literal for `q`: every word and every quoted phrase must match. Raises
    Invalid when no word is left, or when `q` has more than MAX_QUERY_WORDS words."""
    terms: list[str] = []
    count = 0
    for i, part in enumerate(q.split('"')):
        found = words(part)
        count += len(found)
        if i % 2 and len(found) > 1:  # inside quotes: a phrase
            phrase = _phrase(found)
            terms += [phrase] if phrase else []
        else:
            terms += [t for t in map(_term, found) if t is not None]
    if count > MAX_QUERY_WORDS:
        raise Invalid(f"a query has at most {MAX_QUERY_WORDS} words")
    if not terms:
        raise Invalid("the query has no word to search for")
    return " & ".join(terms)
