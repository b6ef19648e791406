"""Fuzzy search over song names and artists, with each database's own machinery.

Both databases search `name_search || ' ' || artist_search`: the name and the
artist case-folded, accents and punctuation dropped (`models.search_fold`), so
"beyonce" finds "Beyoncé" on both.

- PostgreSQL: pg_trgm. A GIN trigram index finds the rows whose word
  similarity to the query passes a threshold (`<%`); they rank by word
  similarity (`<<->`), then by whole-text similarity (`<->`).
- SQLite: an FTS5 trigram index (kept in step with the table by triggers)
  finds the rows sharing a trigram with the query; a fuzzy score from
  rapidfuzz, registered as an SQL function, keeps and ranks the close ones.

Both rank by a distance that depends only on the query and the row, never on
the rest of the table, so paging a search neither skips nor repeats a song
while others are added.
"""

from typing import Any

from rapidfuzz import fuzz
from sqlalchemy import ColumnElement, Float, Select, func, literal, literal_column, select, text
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import Song, search_fold
from app.paging import SortKey

# Word similarity a row needs (pg_trgm's default, 0.6, misses "beatels" for "beatles").
PG_WORD_SIMILARITY = 0.4
# Highest distance (100 - rapidfuzz score) a row may have on SQLite.
SQLITE_MAX_DISTANCE = 25.0
SQLITE_DISTANCE_FUNCTION = "songbook_search_distance"

# Written out as the indexes were made, so that the planners match them.
SEARCHED: ColumnElement[str] = literal_column("(song.name_search || ' ' || song.artist_search)")


def sqlite_distance(query: str, searched: str) -> float:
    """How far a row's search text is from the query, 0 (contains it) to 100."""
    return 100.0 - max(fuzz.partial_ratio(query, searched), fuzz.partial_token_sort_ratio(query, searched))


def install_sqlite_function(dbapi_connection: Any) -> None:
    dbapi_connection.create_function(SQLITE_DISTANCE_FUNCTION, 2, sqlite_distance, deterministic=True)


async def prepare(session: AsyncSession, query: str) -> None:
    """Sets up the transaction of a search (PostgreSQL's similarity threshold)."""
    if _dialect(session) == "postgresql":
        # SET LOCAL rather than a connection setting: it ends with the
        # transaction, and works through PgBouncer's transaction pooling.
        connection = await session.connection()
        await connection.execute(text(f"SET LOCAL pg_trgm.word_similarity_threshold = {PG_WORD_SIMILARITY}"))


def matches(session: AsyncSession, query: str) -> ColumnElement[bool]:
    """The rows the query finds."""
    folded = search_fold(query)
    if _dialect(session) == "postgresql":
        return literal(folded).op("<%")(SEARCHED)
    trigrams = sorted({word[i : i + 3] for word in folded.split() for i in range(len(word) - 2)})
    if not trigrams:  # words of one or two letters: FTS5 trigrams cannot find them
        return SEARCHED.contains(folded)
    fts_query = " OR ".join(f'"{trigram}"' for trigram in trigrams)
    candidates: Select[Any] = (
        select(literal_column("rowid"))
        .select_from(text("song_search"))
        .where(text("song_search MATCH :fts_query").bindparams(fts_query=fts_query))
    )
    return col(Song.id).in_(candidates) & (_sqlite_distance(folded) <= SQLITE_MAX_DISTANCE)


def relevance(session: AsyncSession, query: str) -> list[SortKey]:
    """The sort keys of relevance, best first."""
    folded = search_fold(query)
    if _dialect(session) == "postgresql":
        return [
            SortKey("relevance", literal(folded).op("<<->", return_type=Float)(SEARCHED), float),
            SortKey("similarity", literal(folded).op("<->", return_type=Float)(SEARCHED), float),
        ]
    return [SortKey("relevance", _sqlite_distance(folded), float)]


def _sqlite_distance(folded: str) -> ColumnElement[float]:
    return getattr(func, SQLITE_DISTANCE_FUNCTION)(folded, SEARCHED, type_=Float)  # type: ignore[no-any-return]


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name  # type: ignore[union-attr]
