"""Fuzzy search over song names and artists, with each database's own machinery.

Both databases index the words of `name_search` and `artist_search`: the name
and the artist case-folded, accents and punctuation dropped
(`models.search_fold`), so that "beyonce" finds "Beyoncé" on both. PostgreSQL
keeps them in a full-text index (a `tsvector` column, GIN), SQLite in an FTS5
table; each also keeps the vocabulary of the catalog, the distinct words.

A query is read word by word, in two tiers of relevance:

1. every query word starts a word of the song ("yesterd" finds "Yesterday");
2. else every query word, or a catalog word close to it, does ("beatels"
   finds "Beatles"). The close words come from the vocabulary: found by
   trigram similarity on PostgreSQL (pg_trgm), then, on both databases, kept
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


@dataclass(frozen=True)
class Search:
    """A query, as full-text queries for each tier, in the database's syntax."""

    starts: str  # tier 1: every query word starts a word
    close: str  # tiers 1 and 2: every query word, or a word close to it


async def plan(session: AsyncSession, query: str) -> Search:
    """Reads the query, and looks up in the vocabulary the words close to each of its words."""
    words = list(dict.fromkeys(search_fold(query).split()))[:MAX_WORDS]
    postgres = _dialect(session) == "postgresql"
    alternatives = [await _close_words(session, word, postgres=postgres) for word in words]
    if postgres:
        starts = " & ".join(f"{word}:*" for word in words)
        close = " & ".join(
            "(" + " | ".join([f"{word}:*", *others]) + ")" for word, others in zip(words, alternatives, strict=True)
        )
    else:
        starts = " AND ".join(f'"{word}"*' for word in words)
        close = " AND ".join(
            "(" + " OR ".join([f'"{word}"*', *(f'"{other}"' for other in others)]) + ")"
            for word, others in zip(words, alternatives, strict=True)
        )
    return Search(starts=starts or _NOTHING[postgres], close=close or _NOTHING[postgres])


# A query of no words (only punctuation) finds nothing.
_NOTHING = {True: "''", False: '""'}


async def _close_words(session: AsyncSession, word: str, *, postgres: bool) -> list[str]:
    if postgres:
        # pg_trgm's % (similarity above 0.3), served by the trigram index, then the closest by edits.
        found: ScalarResult[Any] = await session.exec(
            select(literal_column("term"))
            .select_from(text("search_term"))
            .where(text("term % :word").bindparams(word=word))
            .order_by(text("similarity(term, :word) DESC").bindparams(word=word))
            .limit(200)
        )
        candidates = [str(term) for term in found]
    else:
        terms: ScalarResult[Any] = await session.exec(
            select(literal_column("term")).select_from(text("song_search_terms"))
        )
        candidates = [str(term) for term in terms]
    close = extract(
        word,
        candidates,
        scorer=DamerauLevenshtein.normalized_similarity,
        score_cutoff=MIN_SIMILARITY,
        limit=MAX_ALTERNATIVES,
    )
    return sorted(term for term, _, _ in close if term != word)


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
