"""Fuzzy search over song names and artists, with each database's own machinery.

Both databases index the words of `name_search` and `artist_search`: the name
and the artist case-folded, accents and punctuation dropped
(`models.search_fold`), so that "beyonce" finds "Beyoncé" on both. PostgreSQL
keeps them in a full-text index (a `tsvector` column, GIN), SQLite in an FTS5
table; each also keeps the vocabulary of the catalog, the distinct words.

A query is read word by word, in two tiers of relevance:

1. every query word starts a word of the song ("yesterd" finds "Yesterday");
2. else every query word, or one of the catalog's words closest to it, does
   ("beatels" finds "Beatles");
3. else every query word, or a catalog word close enough to it, does. The
   close words come from the vocabulary: the nearest by
   trigram distance on PostgreSQL (pg_trgm), then, on both databases, kept
   when their Damerau-Levenshtein similarity to the query word (rapidfuzz)
   passes `MIN_SIMILARITY`.

Within a tier songs come in id order, so that a page is an index scan that
stops after `limit` rows, whatever the number of matches; and so that paging a
search neither skips nor repeats a song while others are added.
"""

from dataclasses import dataclass
from typing import Any

from rapidfuzz.distance import DamerauLevenshtein
from rapidfuzz.process import extract
from sqlalchemy import ColumnElement, ScalarResult, Select, bindparam, func, literal_column, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import Song, search_fold

MAX_WORDS = 8
# Close enough to mean the query word: one edit in five letters, two in ten.
MIN_SIMILARITY = 0.7
MAX_ALTERNATIVES = 20


MAX_PREFIXED = 50
CANDIDATES = 100


@dataclass(frozen=True)
class Search:
    """A query, as full-text queries for each tier in the database's syntax; None where nothing can match."""

    # Cumulative: tier k finds what queries[k] finds and queries[k - 1] does not.
    # 1: every query word starts a word of the song; 2: or is one of the words
    # closest to it; 3: or is close to it. None where nothing can match.
    queries: tuple[str | None, ...]

    @property
    def everything(self) -> str | None:
        """The query of all the tiers."""
        return self.queries[-1]


@dataclass(frozen=True)
class _Word:
    word: str
    prefixed: list[str] | None  # the catalog's words that start with it; None if too many to list
    closest: list[str]  # the catalog's words closest to it (within 0.05 of the best)
    close: list[str]  # all the catalog's words close to it


async def plan(session: AsyncSession, query: str) -> Search:
    """Reads the query, and looks up each of its words in the catalog's vocabulary."""
    postgres = _dialect(session) == "postgresql"
    words = list(dict.fromkeys(search_fold(query).split()))[:MAX_WORDS]
    found = [await _look_up(session, word, postgres=postgres) for word in words]
    return Search(
        queries=(
            _full_text_query([_starting(word, postgres) for word in found], postgres),
            _full_text_query([[*_starting(word, postgres), *word.closest] for word in found], postgres),
            _full_text_query([[*_starting(word, postgres), *word.close] for word in found], postgres),
        )
    )


def _starting(word: _Word, postgres: bool) -> list[str]:
    # Listing the words themselves, rather than a prefix query, lets the
    # planner estimate from its statistics how many songs hold them.
    if word.prefixed is not None:
        return word.prefixed
    return [f"{word.word}:*" if postgres else f'"{word.word}"*']


def _full_text_query(alternatives: list[list[str]], postgres: bool) -> str | None:
    """All the words, each as one of its alternatives; None when a word has none (nothing matches)."""
    if not alternatives or not all(alternatives):
        return None
    quoted = [
        [term if term.endswith("*") else (term if postgres else f'"{term}"') for term in terms]
        for terms in alternatives
    ]
    if postgres:
        return " & ".join("(" + " | ".join(terms) + ")" for terms in quoted)
    return " AND ".join("(" + " OR ".join(terms) + ")" for terms in quoted)


async def _look_up(session: AsyncSession, word: str, *, postgres: bool) -> _Word:
    if postgres:
        # The words it starts: a range of the vocabulary's primary key (byte-wise collation).
        prefixed: ScalarResult[Any] = await session.exec(
            select(literal_column("term"))
            .select_from(text("search_term"))
            .where(text("term >= :low AND term < :high").bindparams(low=word, high=word + "\U0010ffff"))
            .limit(MAX_PREFIXED + 1)
        )
        starting: list[str] = [str(term) for term in prefixed]
        # Candidates: the nearest words by trigram distance, from the trigram
        # index (GiST, nearest first). No threshold: "lonley" is only 0.27
        # similar to "lonely" by trigrams, one edit by Damerau-Levenshtein.
        similar: ScalarResult[Any] = await session.exec(
            select(literal_column("term"))
            .select_from(text("search_term"))
            .order_by(text("term <-> :word").bindparams(word=word))
            .limit(CANDIDATES)
        )
        candidates = [str(term) for term in similar]
    else:
        terms: ScalarResult[Any] = await session.exec(
            select(literal_column("term")).select_from(text("song_search_terms"))
        )
        candidates = [str(term) for term in terms]
        starting = [term for term in candidates if term.startswith(word)][: MAX_PREFIXED + 1]
    close = extract(
        word,
        candidates,
        scorer=DamerauLevenshtein.normalized_similarity,
        score_cutoff=MIN_SIMILARITY,
        limit=MAX_ALTERNATIVES,
    )
    others = [match for match in close if not match[0].startswith(word)]  # best first
    return _Word(
        word=word,
        prefixed=sorted(starting) if len(starting) <= MAX_PREFIXED else None,
        closest=sorted(term for term, score, _ in others if score >= others[0][1] - 0.05),
        close=sorted(term for term, _, _ in others),
    )


def matches(session: AsyncSession, full_text_query: str) -> ColumnElement[bool]:
    """The songs a full-text query (one of `Search`'s) finds."""
    if _dialect(session) == "postgresql":
        vector: ColumnElement[Any] = literal_column("song.search_vector")
        return vector.op("@@")(func.to_tsquery("simple", full_text_query))
    found: Select[Any] = (
        select(literal_column("rowid"))
        .select_from(text("song_search"))
        .where(text("song_search MATCH :query").bindparams(bindparam("query", full_text_query, unique=True)))
    )
    return col(Song.id).in_(found)


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name  # type: ignore[union-attr]
