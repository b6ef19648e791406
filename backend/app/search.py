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
   close words come from the vocabulary: those similar
   by trigrams on PostgreSQL (pg_trgm), those of its first letter on SQLite,
   and on both the query word with two letters side by side swapped, then kept
   when their Damerau-Levenshtein similarity to the query word (rapidfuzz)
   passes `MIN_SIMILARITY`.

Finding the close words costs more than the search itself (a trigram scan of
the vocabulary): `NearWords` keeps them for a while. The words a query word
starts are the full-text index's own prefix match, in the statement of the
page: a search whose close words are kept is one statement.

Within a tier songs come in id order, so that a page is an index scan that
stops after `limit` rows, whatever the number of matches. A search's cursors
carry a fingerprint of the words it looks for: when added songs change them,
the walk is told to start again rather than skip or repeat songs.
"""

import asyncio
import contextvars
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache
from rapidfuzz.distance import DamerauLevenshtein
from rapidfuzz.process import extract
from sqlalchemy import (
    ARRAY,
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    String,
    bindparam,
    func,
    literal_column,
    text,
)
from sqlmodel import col, select

from app import replicas
from app.folding import search_fold
from app.models import Song

if TYPE_CHECKING:  # the database hands its searches this module's cache of near words
    from app.db import Database, Transaction

# Close enough to mean the query word: one edit in five letters, two in ten.
MIN_SIMILARITY = 0.7
MAX_ALTERNATIVES = 20


MIN_PREFIX = 3
CANDIDATES = 100
TRIGRAM_SIMILARITY = 0.2
# A word new to the catalog is offered as the correction of a misspelling this long
# after it came, at most (typed right, it is found at once).
NEAR_WORDS_SECONDS = 10.0
# Searched again once this share of their time has passed, a word's near words are looked
# up anew in the background, and it keeps being answered from what is kept meanwhile.
REFRESH_AFTER = 0.8
NEAR_WORDS_KEPT = 10_000  # query words; the least recently used go first

logger = logging.getLogger(__name__)


class NearWords:
    """The catalog's words close to each query word (and how close), as last looked up: one per `Database`.

    Looking them up takes a trigram scan of the vocabulary on PostgreSQL, and on
    SQLite every word of the same initial, then an edit distance to each: most of
    a search's time, for an answer that changes only when the vocabulary gains a
    word. They are kept `NEAR_WORDS_SECONDS`, so that a new word becomes a
    correction within that time; the words that a query word starts, which make
    the first tier, are never kept.

    A word searched again in the last fifth of that time is looked up anew in
    the background (refresh-ahead), while the searches go on with what is kept:
    a word searched often never makes a search wait for its look-up, and what is
    kept is never older than `NEAR_WORDS_SECONDS`.
    """

    def __init__(
        self, seconds: float = NEAR_WORDS_SECONDS, size: int = NEAR_WORDS_KEPT, clock: Callable[[], float] = monotonic
    ) -> None:
        self._known: TTLCache[str, tuple[list[tuple[str, float]], float]] = TTLCache(
            maxsize=size, ttl=seconds, timer=clock
        )
        self._clock = clock
        self._refresh_after = seconds * REFRESH_AFTER
        self._refreshing: asyncio.Task[None] | None = None

    def get(self, word: str) -> list[tuple[str, float]] | None:
        kept = self._known.get(word)
        return None if kept is None else kept[0]

    def keep(self, word: str, near: list[tuple[str, float]]) -> None:
        self._known[word] = (near, self._clock())

    def refresh(self, words: list[str], look_up: Callable[[list[str]], Awaitable[object]]) -> None:
        """Has `look_up` (which keeps what it finds) look anew, in the background, for those of `words` kept
        long enough: one look-up at a time, the words due meanwhile left to the searches after it."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        now = self._clock()
        due = [
            word
            for word in words
            if (kept := self._known.get(word)) is not None and now - kept[1] >= self._refresh_after
        ]
        if not due:
            return
        # In a context of its own, not the request's (its log records, its transaction), reading where a GET reads.
        context = contextvars.Context()
        context.run(replicas.read_anywhere)
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh(due, look_up), context=context)

    async def _refresh(self, words: list[str], look_up: Callable[[list[str]], Awaitable[object]]) -> None:
        try:
            await look_up(words)
        except Exception:
            # What was kept expires in its time, and the next search of the word looks it up itself.
            logger.warning("looking up the near words of %s anew failed", words, exc_info=True)

    async def settle(self) -> None:
        """Waits for the look-up under way, if any."""
        if self._refreshing is not None:
            await self._refreshing

    async def close(self) -> None:
        """Stops the look-up under way (the database is closing)."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)


@dataclass(frozen=True)
class Search:
    """A query, as full-text queries for each tier in the database's syntax; None where nothing can match."""

    # Cumulative: tier k finds what queries[k] finds and queries[k - 1] does not.
    # 1: every query word starts a word of the song; 2: or is one of the words
    # closest to it; 3: or is close to it. None where nothing can match.
    queries: tuple[str | None, ...]
    postgres: bool  # the syntax of the queries: PostgreSQL's, else SQLite's FTS5

    @property
    def everything(self) -> str | None:
        """The query of all the tiers."""
        return self.queries[-1]

    @property
    def fingerprint(self) -> str:
        """Short, and changed when the words a page walk looks for change (the vocabulary grew)."""
        return hashlib.sha256(repr(self.queries).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _Word:
    word: str
    closest: list[str]  # the catalog's words closest to it (within 0.05 of the best)
    close: list[str]  # all the catalog's words close to it


async def plan(db: "Database", query: str) -> Search:
    """Reads the query, and finds the catalog's words close to each of its words (kept in `db.near_words`):
    no statement for words looked up lately, else one, in a transaction of its own."""
    postgres = db.dialect == "postgresql"
    words = list(dict.fromkeys(search_fold(query).split()))  # at most SEARCH_WORDS_MAX (models.SearchQuery)
    known = {word: db.near_words.get(word) for word in words}
    unknown = [word for word in words if known[word] is None and len(word) >= MIN_PREFIX]
    if unknown:
        known |= await _look_up(db, unknown)
    db.near_words.refresh([word for word in words if word not in unknown], functools.partial(_look_up, db))
    found = [_word(word, known[word] or []) for word in words]
    return Search(
        queries=(
            _full_text_query([_starting(word, postgres) for word in found], postgres),
            _full_text_query([[*_starting(word, postgres), *word.closest] for word in found], postgres),
            _full_text_query([[*_starting(word, postgres), *word.close] for word in found], postgres),
        ),
        postgres=postgres,
    )


async def _look_up(db: "Database", words: list[str]) -> dict[str, list[tuple[str, float]]]:
    """The catalog's words close to each of `words`, kept in `db.near_words`: one statement on PostgreSQL."""
    candidates = await (_postgres_nearest(db, words) if db.dialect == "postgresql" else _sqlite_vocabulary(db, words))
    found = {word: _near(word, candidates[word]) for word in words}
    for word, near in found.items():
        db.near_words.keep(word, near)
    return found


def _starting(word: _Word, postgres: bool) -> list[str]:
    """The words that `word` starts, as a prefix query; a word too short to be a prefix, as itself."""
    if len(word.word) < MIN_PREFIX:
        # "n" of "Guns N' Roses": as a prefix it would match nearly everything.
        return [word.word]  # quoted for SQLite by _full_text_query, as every word that is no prefix
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


# The words similar to each by trigrams, from the GIN index: at 0.2 rather than pg_trgm's 0.3, as "lonley"
# is only 0.27 similar to "lonely" by trigrams, though one edit away.
# Then the catalog's words among the query words with two letters side by side swapped ("lvoe": "love"):
# one edit, but for a short word too few trigrams in common to be found so ("lvoe" and "love": 0.11).
_POSTGRES_NEAREST = text(
    """
    SELECT query.word, found.term FROM unnest(CAST(:words AS text[])) AS query (word)
    CROSS JOIN LATERAL (
        SELECT term FROM search_term WHERE term % query.word AND NOT starts_with(term, query.word)
        ORDER BY term <-> query.word, term LIMIT :most
    ) AS found
    UNION ALL
    SELECT swap.word, swap.term FROM unnest(CAST(:swap_words AS text[]), CAST(:swaps AS text[])) AS swap (word, term)
    WHERE EXISTS (SELECT FROM search_term WHERE search_term.term = swap.term)
    """
).bindparams(
    bindparam("words", type_=ARRAY(String)),
    bindparam("most", type_=Integer),
    bindparam("swap_words", type_=ARRAY(String)),
    bindparam("swaps", type_=ARRAY(String)),
)
# fts5vocab reads the index for the range of terms asked, not the whole vocabulary.
_SQLITE_TERMS = text("SELECT term FROM song_search_terms WHERE term >= :low AND term < :high LIMIT :most").bindparams(
    bindparam("low", type_=String), bindparam("high", type_=String), bindparam("most", type_=Integer)
)
_LAST = "\U0010ffff"


async def _postgres_nearest(db: "Database", words: list[str]) -> dict[str, list[str]]:
    swaps = [(word, swapped) for word in words for swapped in _swapped(word)]
    params = {"words": words, "most": CANDIDATES, "swap_words": [w for w, _ in swaps], "swaps": [t for _, t in swaps]}

    async def candidates(transaction: "Transaction") -> Sequence[Mapping[str, Any]]:
        # SET LOCAL ends with the transaction (and works through PgBouncer's transaction pooling).
        await transaction.fetch(text(f"SET LOCAL pg_trgm.similarity_threshold = {TRIGRAM_SIMILARITY}"))
        return await transaction.fetch(_POSTGRES_NEAREST, params)

    nearest: dict[str, list[str]] = {word: [] for word in words}
    for row in await db.read(candidates):
        if row["term"] not in nearest[row["word"]]:  # a swap the trigrams found too
            nearest[row["word"]].append(row["term"])
    return nearest


async def _sqlite_vocabulary(db: "Database", words: list[str]) -> dict[str, list[str]]:
    """For each word, the vocabulary's words that share its first letter, and the word with its first two
    swapped: a first letter misspelt otherwise goes uncorrected."""
    vocabulary = {}
    for word in words:
        rows = await db.fetch(_SQLITE_TERMS, {"low": word[0], "high": word[0] + _LAST, "most": -1})
        vocabulary[word] = [str(row["term"]) for row in rows]
        if len(word) > 1 and word[0] != word[1]:
            first_swapped = word[1] + word[0] + word[2:]
            rows = await db.fetch(_SQLITE_TERMS, {"low": first_swapped, "high": first_swapped + "\0", "most": 1})
            vocabulary[word] += [str(row["term"]) for row in rows]
    return vocabulary


def _swapped(word: str) -> list[str]:
    """`word` with each pair of letters side by side swapped (those that make another word)."""
    variants = (word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(len(word) - 1))
    return list(dict.fromkeys(variant for variant in variants if variant != word))


def _near(word: str, candidates: list[str]) -> list[tuple[str, float]]:
    """The candidates close enough to `word` to mean it (and how close), best first; none that start with it.

    Those are left out first: its prefix query finds them, and kept, they would
    take the places of the corrections ("maria" and "marie" before "mary").
    """
    close = extract(
        word,
        [term for term in candidates if not term.startswith(word)],
        scorer=DamerauLevenshtein.normalized_similarity,
        score_cutoff=MIN_SIMILARITY,
        limit=MAX_ALTERNATIVES,
    )
    return [(term, score) for term, score, _ in close]


def _word(word: str, near: list[tuple[str, float]]) -> _Word:
    if len(word) < MIN_PREFIX:
        # Too short to be told from a misspelling of nearly every word.
        return _Word(word=word, closest=[], close=[])
    return _Word(
        word=word,
        closest=sorted(term for term, score in near if score >= near[0][1] - 0.05),
        close=sorted(term for term, _ in near),
    )


def matches(searched: Search, full_text_query: str) -> ColumnElement[bool]:
    """The songs a full-text query (one of `searched`'s) finds, the query inline."""
    return _matches(searched.postgres, bindparam("query", full_text_query, unique=True))


def matches_parameter(postgres: bool, name: str) -> ColumnElement[bool]:
    """The songs that the full-text query given as the parameter `name` finds: for a statement compiled once."""
    return _matches(postgres, bindparam(name, type_=String))


def _matches(postgres: bool, query: BindParameter[Any]) -> ColumnElement[bool]:
    if postgres:
        vector: ColumnElement[Any] = literal_column("song.search_vector")
        # The configuration as literal SQL: SQLAlchemy cannot render a REGCONFIG
        # parameter inline, which the planner's estimate (EXPLAIN) needs.
        return vector.op("@@")(func.to_tsquery(literal_column("'simple'"), query))
    found: Select[Any] = (
        select(literal_column("rowid"))
        .select_from(text("song_search"))
        .where(literal_column("song_search").op("MATCH")(query))
    )
    return col(Song.id).in_(found)
