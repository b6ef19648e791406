"""The catalog: every read and write of songs, as plain async functions over the `Database`.

Each function decides how it reaches the database: one statement compiled
once (`Database.fetch`, the hot paths), or a unit of work on a session
(`Database.transaction`). Callers see neither.
"""

import asyncio
import functools
import json
import math
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import BindParameter, ColumnElement, Select, and_, bindparam, false, func, literal, literal_column, or_
from sqlalchemy.orm import Mapped
from sqlalchemy.sql.dml import UpdateBase
from sqlmodel import col

from app import exporting, metrics, search, swap
from app.checking import Rejected
from app.db import INTEGRITY_ERRORS, Database, Statement, Transaction
from app.errors import (
    BatchDuplicate,
    DuplicateSong,
    DuplicateSongs,
    IdsUsedUp,
    ImportNeedsIdsPast,
    InvalidParameter,
    NotFound,
    PreconditionFailed,
    ids_used_up,
)
from app.fields import ID_MAX, YEAR_MAX, YEAR_MIN, utcnow
from app.folding import derived_columns, search_fold, song_key
from app.formats import Format, RawRow
from app.importing import Import, OnConflict, Summary
from app.models import (
    ArtistPublic,
    ArtistQuery,
    BatchItem,
    BatchResult,
    Song,
    SongCreate,
    SongQuery,
    SongRow,
    SongUpdate,
)
from app.paging import SortKey, ValueKind, after, decode_cursor, encode_cursor
from app.preconditions import AllBut, etag

T = TypeVar("T")


# What a reader is shown of a song, with its version: the columns of `SongRow`.
READ_COLUMNS = (
    col(Song.id),
    col(Song.name),
    col(Song.artist),
    col(Song.year),
    col(Song.created_at),
    col(Song.updated_at),
    col(Song.version),
)
_ROW_FIELDS = tuple(SongRow.__annotations__)
_INSERTED = ("name", "artist", "year", "name_key", "artist_key", "name_search", "artist_search")
_INSERT_SONG = (
    sa.insert(Song)
    .values({name: bindparam(name) for name in (*_INSERTED, "version", "created_at", "updated_at")})
    .returning(*READ_COLUMNS)
)
_GET_SONG = sa.select(*READ_COLUMNS).where(col(Song.id) == bindparam("song_id"))
_FIND_SONG_ID = sa.select(col(Song.id)).where(
    col(Song.name_key) == bindparam("name_key"), col(Song.artist_key) == bindparam("artist_key")
)
_VERSION_OF = sa.select(col(Song.version)).where(col(Song.id) == bindparam("song_id"))
WRITE_ATTEMPTS = 3  # a write whose duplicate went meanwhile is made again, this many times in all
# Ids for new songs, set aside from the table's sequence (PostgreSQL) a block at a time, for a second at most.
ID_BLOCK = 32
SET_ASIDE_SECONDS = 1.0
_NEXT_ID = func.nextval(literal_column("pg_get_serial_sequence('song', 'id')"))
_BLOCK = func.generate_series(literal_column("1"), bindparam("count"))
_SET_ASIDE_IDS = sa.select(_NEXT_ID.label("id")).select_from(_BLOCK)


@dataclass
class _SetAside:
    """A process's ids set aside, for one database; one request at a time takes a new block under `refill`."""

    ids: deque[int] = field(default_factory=deque)
    taken: float = -math.inf  # when, by the monotonic clock
    refill: asyncio.Lock = field(default_factory=asyncio.Lock)

    def usable(self) -> bool:
        return bool(self.ids) and time.monotonic() - self.taken <= SET_ASIDE_SECONDS


_set_aside: "weakref.WeakKeyDictionary[Database, _SetAside]" = weakref.WeakKeyDictionary()


# Counted once the change is made: a replayed answer counts nothing.
_created = metrics.songs_changed.labels("create", "api")
_updated = metrics.songs_changed.labels("update", "api")
_deleted = metrics.songs_changed.labels("delete", "api")


def _song_row(row: Mapping[str, Any]) -> SongRow:
    return {field: row[field] for field in _ROW_FIELDS}  # type: ignore[return-value]


async def create_song(*, db: Database, song_in: SongCreate) -> SongRow:
    """Adds a song; a `DuplicateSong` error if the catalog has it already."""
    now = utcnow()
    values = song_in.model_dump()
    row = values | derived_columns(values) | {"version": 1, "created_at": now, "updated_at": now}

    async def keys() -> tuple[str, str]:
        return row["name_key"], row["artist_key"]

    created = await _write_unless_duplicate(db, _INSERT_SONG, row, keys)
    _created.inc()
    return _song_row(created[0])


async def new_song(*, db: Database, song_in: SongCreate) -> dict[str, Any] | None:
    """The row that creates `song_in`, with an id set aside for it: every value known before it is written.

    None on SQLite, where the insert gives the id. The ids are taken from the
    table's sequence ID_BLOCK at a time: a block costs one statement; the ids
    of a block a process does not use are never used. A block is used for
    SET_ASIDE_SECONDS at most: songs created further apart than that have ids
    in the order they were created, whichever process made them, and an id an
    import brought, or a sequence set back by a restore, is not handed out for longer.
    """
    if db.dialect != "postgresql":
        return None
    block = _set_aside.get(db)
    if block is None:
        block = _set_aside[db] = _SetAside()
    if not block.usable():
        # The requests that find the block used up wait for the one that takes the next: each taking its own,
        # 32 creates in flight threw most of each block away, a statement a request or so.
        async with block.refill:
            if not block.usable():
                taken = time.monotonic()
                rows = await db.fetch(_SET_ASIDE_IDS, {"count": ID_BLOCK}, write=True)
                block.ids, block.taken = deque(row["id"] for row in rows), taken
    now = utcnow()
    values = song_in.model_dump()
    return (
        values
        | derived_columns(values)
        | {"id": block.ids.popleft(), "version": 1, "created_at": now, "updated_at": now}
    )


def song_of(row: Mapping[str, Any]) -> SongRow:
    """The song a row of the table is, as readers are shown it."""
    return _song_row(row)


def count_created() -> None:
    """Counts a song `new_song` made, once it is written."""
    _created.inc()


async def get_song(*, db: Database, song_id: int) -> SongRow:
    """Gets a song by its id."""
    _check_id(song_id)
    rows = await db.fetch(_GET_SONG, {"song_id": song_id})
    if not rows:
        raise _not_found(song_id)
    return _song_row(rows[0])


async def update_song(
    *, db: Database, song_id: int, changes: SongUpdate, versions: Collection[int] | None = None
) -> SongRow:
    """Changes the fields given in `changes`; a `DuplicateSong` error if that makes it another song.

    With `versions`, only if the song is at one of them (else `PreconditionFailed`).
    """
    return await _write(db, song_id, changes.model_dump(exclude_unset=True), versions)


async def replace_song(
    *, db: Database, song_id: int, song_in: SongCreate, versions: Collection[int] | None = None
) -> SongRow:
    """Replaces every field of the song (a year left out is no year)."""
    return await _write(db, song_id, song_in.model_dump(), versions)


async def delete_song(*, db: Database, song_id: int, versions: Collection[int] | None = None) -> None:
    """Removes a song from the catalog; with `versions`, only if it is at one of them."""
    _check_id(song_id)
    accepted = _version_values(versions)
    deleted = await db.fetch(_delete_statement(_count(versions)), {"song_id": song_id} | accepted, write=True)
    if not deleted:
        raise await _why_not_written(db, song_id)
    _deleted.inc()


async def _write(db: Database, song_id: int, values: dict[str, Any], versions: Collection[int] | None) -> SongRow:
    _check_id(song_id)
    if not values:
        current = await get_song(db=db, song_id=song_id)
        if versions is not None and current["version"] not in versions:
            raise PreconditionFailed(song_id, etag(current["version"]))
        return current
    # One UPDATE ... RETURNING: no read-then-write for a concurrent writer to slip
    # between, and the version it checks is the one it increments.
    changed = values | derived_columns(values)
    params = {f"new_{name}": value for name, value in changed.items()} | _version_values(versions)
    statement = _update_statement(tuple(sorted(changed)), _count(versions))

    async def keys() -> tuple[str, str]:
        current = await get_song(db=db, song_id=song_id)
        merged = {"name": current["name"], "artist": current["artist"]} | values
        return song_key(merged["name"]), song_key(merged["artist"])

    rows = await _write_unless_duplicate(db, statement, params | {"song_id": song_id, "now": utcnow()}, keys)
    if not rows:
        raise await _why_not_written(db, song_id)
    _updated.inc()
    return _song_row(rows[0])


# Statements made once for each shape (the columns set, how many versions If-Match
# accepts), so that `Database` compiles each once.


@functools.lru_cache(maxsize=256)
def _update_statement(columns: tuple[str, ...], versions: tuple[bool, int] | None) -> UpdateBase:
    return (
        sa.update(Song)
        .where(col(Song.id) == bindparam("song_id"), *_at_version(versions))
        .values(
            {name: bindparam(f"new_{name}") for name in columns}
            # A literal 1: a value SQLAlchemy would bind itself is not one `Database` passes.
            | {"version": col(Song.version) + literal_column("1"), "updated_at": bindparam("now")}
        )
        .returning(*READ_COLUMNS)
    )


@functools.lru_cache(maxsize=64)
def _delete_statement(versions: tuple[bool, int] | None) -> UpdateBase:
    return sa.delete(Song).where(col(Song.id) == bindparam("song_id"), *_at_version(versions)).returning(col(Song.id))


def _at_version(versions: tuple[bool, int] | None) -> list[ColumnElement[bool]]:
    if versions is None:
        return []
    all_but, count = versions
    listed: list[BindParameter[int]] = [bindparam(f"if_version_{i}") for i in range(count)]
    if all_but:
        return [col(Song.version).not_in(listed)] if count else []
    return [col(Song.version).in_(listed)] if count else [false()]


def _count(versions: Collection[int] | None) -> tuple[bool, int] | None:
    """The shape of the versions' condition: whether they are all but those listed, and how many."""
    return None if versions is None else (isinstance(versions, AllBut), len(versions))


def _version_values(versions: Collection[int] | None) -> dict[str, int]:
    # Those listed, for AllBut too: only `in` reads it the other way.
    return {f"if_version_{i}": version for i, version in enumerate(sorted(versions or ()))}


async def _why_not_written(db: Database, song_id: int) -> NotFound | PreconditionFailed:
    rows = await db.fetch(_VERSION_OF, {"song_id": song_id})
    return PreconditionFailed(song_id, etag(rows[0]["version"])) if rows else _not_found(song_id)


async def _write_unless_duplicate(
    db: Database, statement: Statement, params: Mapping[str, Any], keys: Callable[[], Awaitable[tuple[str, str]]]
) -> Sequence[Mapping[str, Any]]:
    """The rows of a write that makes a song `keys()` names; `DuplicateSong` if another song has those keys.

    The one constraint valid input can break is that pair of keys. A song that
    broke it may be gone by the time it is looked up (deleted or renamed just
    after): the write is then made again, as it may now go through.
    """
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            return await db.fetch(statement, params, write=True)
        except INTEGRITY_ERRORS as exc:
            if ids_used_up(exc):
                raise IdsUsedUp() from exc
            name_key, artist_key = await keys()
            await _raise_if_duplicate(db, name_key=name_key, artist_key=artist_key)
            if attempt == WRITE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def _raise_if_duplicate(db: Database, *, name_key: str, artist_key: str) -> None:
    found = await db.fetch(_FIND_SONG_ID, {"name_key": name_key, "artist_key": artist_key})
    if found:
        raise DuplicateSong(found[0]["id"])


def _check_id(song_id: int) -> None:
    """Not found, for an id no song can have (the pages' URLs take any number; the API's, only these)."""
    if not 1 <= song_id <= ID_MAX:
        raise _not_found(song_id)


def _not_found(song_id: int) -> NotFound:
    return NotFound(f"No song has id {song_id}.")


async def create_songs(*, db: Database, songs_in: list[SongCreate], on_conflict: OnConflict) -> BatchResult:
    """Adds songs, all in one transaction, under the conflict rule of `songbook import`.

    Under `OnConflict.ERROR`, a song already there (or twice in the batch) is a
    `DuplicateSongs` error and nothing is written.
    """
    rejected: list[Rejected] = []
    async with db.transaction(write=True) as transaction:
        job = Import(await transaction.connection(), on_conflict, rejected=rejected.append)
        await job.start()
        await job.stage("body", (RawRow(index, song.model_dump()) for index, song in enumerate(songs_in)))
        try:
            outcomes = await job.apply(outcomes=True)
        except ImportNeedsIdsPast:
            raise IdsUsedUp() from None
        if rejected:
            raise DuplicateSongs(
                [BatchDuplicate(index=row.line, existing_id=row.existing_id, same_as=row.same_as) for row in rejected]
            )
    # Ranks count the staged songs from 1, in the order given.
    items = [
        BatchItem(index=rank - 1, status=outcome.status, id=outcome.id) for rank, outcome in sorted(outcomes.items())
    ]
    statuses = [item.status for item in items]
    result = BatchResult(
        created=statuses.count("created"),
        updated=statuses.count("updated"),
        duplicates=statuses.count("duplicate"),
        items=items,
    )
    metrics.songs_changed.labels("create", "batch").inc(result.created)
    metrics.songs_changed.labels("update", "batch").inc(result.updated)
    return result


async def import_songs(
    *,
    db: Database,
    sources: Iterable[tuple[str, Iterable[RawRow]]],
    on_conflict: OnConflict = OnConflict.SKIP,
    rejected: Callable[[Rejected], None] = lambda row: None,
    max_errors: int | None = None,
    dry_run: bool = False,
    applying: Callable[[Summary], None] = lambda summary: None,
    bulk: bool = False,
    lock_wait_seconds: float = swap.LOCK_WAIT_SECONDS,
) -> Summary:
    """Imports the rows of each (name, rows) source in one transaction: all of them, or (killed or failed) none.

    `rejected` is told of each row left out as soon as it is known, and
    `applying` when every row is staged; `dry_run` rolls it all back. `bulk`
    only for a process that runs the import alone (the CLI): it may check the
    rows in a worker process, turn the garbage collector off and use more memory
    (`Import.bulk`); never inside the server, whose requests share the process.
    A bulk import on PostgreSQL gives up after `lock_wait_seconds` waiting for
    transactions that hold the song table (`swap.lock`).
    """
    async with db.transaction(write=True) as transaction:
        job = Import(
            await transaction.connection(),
            on_conflict,
            rejected=rejected,
            max_errors=max_errors,
            bulk=bulk,
            dry_run=dry_run,
            lock_wait_seconds=lock_wait_seconds,
        )
        await job.start()
        for source, rows in sources:
            await job.stage(source, rows)
        applying(job.summary)
        await job.apply()
        if dry_run:
            await transaction.rollback()
    return job.summary


@dataclass
class Page(Generic[T]):
    """One page of a listing, and the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None
    total: int | None = None  # only when asked for


# Songs without a year sort first. A literal 0, not a parameter, so that SQLite
# matches the expression of ix_song_year_sort.
YEAR = func.coalesce(col(Song.year), literal_column("0"))

SORTABLE: dict[str, tuple[ColumnElement[Any] | Mapped[Any], ValueKind]] = {
    "name": (col(Song.name_key), str),
    "artist": (col(Song.artist_key), str),
    "year": (YEAR, int),
    "created_at": (col(Song.created_at), datetime),
    "id": (col(Song.id), int),
}


async def list_songs(
    *, db: Database, query: SongQuery, count: Literal["exact", "estimated"] | None = None
) -> Page[SongRow]:
    """A page of the songs that match `query`, in its order; with their total if `count` asks for it."""
    if query.q is None and count is None:
        # The hot path: one statement, made once for its shape.
        statement, params, signature = _in_order(query, found=None)
        return _ordered_page(await db.fetch(statement, params), signature, query.limit)
    # Planned once for the page and the count, so that both look for the same words.
    found = await search.plan(db, query.q) if query.q else None
    if found and (query.sort is None or query.sort.strip() == "relevance") and count is None:
        return await _search_by_relevance(db, query=query, found=found)  # the hot path too

    async def page_and_count(transaction: Transaction) -> Page[SongRow]:
        if found and (query.sort is None or query.sort.strip() == "relevance"):
            page = await _search_by_relevance(transaction, query=query, found=found)
        else:
            statement, params, signature = _in_order(query, found)
            page = _ordered_page(await transaction.fetch(statement, params), signature, query.limit)
        if count == "exact":
            counting = sa.select(func.count().label("count")).select_from(Song).where(*_matching(query, found))
            page.total = (await transaction.fetch(counting, _filter_values(query)))[0]["count"]
        return page

    page = await db.read(page_and_count)
    if count == "estimated":
        listing = sa.select(col(Song.id)).where(*_matching(query, found))
        page.total = await db.estimated_rows(listing, _filter_values(query))
    return page


def _in_order(query: SongQuery, found: search.Search | None) -> tuple[Select[Any], dict[str, Any], str]:
    """The statement of a page in `query`'s order, its parameters, and the signature of its cursors."""
    signature, keys = _song_order(query, found)
    filters = _filter_values(query)
    signature += _filter_signature(filters)
    params = filters | {"limit": query.limit + 1}  # one row past the page: is there a next one?
    if query.cursor:
        values = decode_cursor(query.cursor, signature, [key.kind for key in keys])
        params |= {f"after_{i}": value for i, value in enumerate(values)}
    statement = _page_statement(tuple((key.name, key.descending) for key in keys), frozenset(params))
    if found is not None:
        statement = statement.where(_found(found))
    return statement, params, signature


@functools.lru_cache(maxsize=256)
def _page_statement(order: tuple[tuple[str, bool], ...], parameters: frozenset[str]) -> Select[Any]:
    """A page's statement, for its sort keys (name, descending) and the parameters of its filters and cursor.

    Made once for each shape, so that `Database` compiles it once.
    """
    keys = [SortKey(name, *SORTABLE[name], descending) for name, descending in order]
    statement = sa.select(*READ_COLUMNS, *(key.expression.label(f"key_{i}") for i, key in enumerate(keys)))
    statement = statement.where(*_filters(parameters))
    if "after_0" in parameters:
        cursor = [bindparam(f"after_{i}", type_=key.expression.type) for i, key in enumerate(keys)]  # type: ignore[union-attr]
        statement = statement.where(after(keys, cursor))
    return statement.order_by(*(key.ordering() for key in keys)).limit(bindparam("limit", type_=sa.Integer))


def _ordered_page(rows: Sequence[Mapping[str, Any]], signature: str, limit: int) -> Page[SongRow]:
    """The first `limit` of `rows`, read one past the page: a next cursor only when there is a row after it."""
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(signature, [last[f"key_{i}"] for i in range(len(last) - len(READ_COLUMNS))])
    # The rows as the driver gives them: they have SongRow's keys (and the sort keys after). Copying
    # each into a dict of its own cost a twentieth of a page's time (py-spy), for nothing.
    return Page(cast(list[SongRow], list(rows[:limit])), next_cursor)


async def _search_by_relevance(
    reader: Database | Transaction, *, query: SongQuery, found: search.Search
) -> Page[SongRow]:
    """The songs of each tier of `found` in turn, each tier in id order; a statement each, made once per shape."""
    assert query.q is not None
    # A cursor holds the words searched for: if the vocabulary changed them
    # since, the walk must start again rather than skip or repeat songs.
    filters = _filter_values(query)
    signature = f"relevance?{search_fold(query.q)}?{found.fingerprint}" + _filter_signature(filters)
    tier, after_id = decode_cursor(query.cursor, signature, [int, int]) if query.cursor else (1, 0)
    words = {f"tier_{number}": full_text_query for number, full_text_query in enumerate(found.queries, start=1)}
    page: list[tuple[int, SongRow]] = []
    wanted = query.limit + 1  # one song past the page: is there a next one?
    reached = "none"
    for number, excluded in enumerate(_tiers(found.queries), start=1):
        if excluded is None or number < tier or len(page) == wanted:
            continue
        reached = str(number)
        # Each tier is its own query in id order: the database stops after the rows it needs.
        statement = _tier_statement(found.postgres, number, excluded, frozenset(filters))
        params = filters | words | {"after_id": after_id if number == tier else 0, "limit": wanted - len(page)}
        page += [(number, _song_row(row)) for row in await reader.fetch(statement, params)]
    metrics.searches.labels(reached).inc()
    next_cursor = None
    if len(page) > query.limit:
        last_tier, last_song = page[query.limit - 1]
        next_cursor = encode_cursor(signature, [last_tier, last_song["id"]])
    return Page([song for _, song in page[: query.limit]], next_cursor)


def _tiers(queries: tuple[str | None, ...]) -> list[int | None]:
    """For each tier, the earlier one whose songs it leaves out (0: none); None for a tier that adds no songs.

    The queries are cumulative: a tier finds what its query finds and the last tier before it did not.
    """
    tiers: list[int | None] = []
    previous, previous_query = 0, None
    for number, full_text_query in enumerate(queries, start=1):
        if full_text_query is None or full_text_query == previous_query:  # no words, or no new ones
            tiers.append(None)
            continue
        tiers.append(previous)
        previous, previous_query = number, full_text_query
    return tiers


@functools.lru_cache(maxsize=128)
def _tier_statement(postgres: bool, number: int, excluded: int, filters: frozenset[str]) -> Select[*tuple[Any, ...]]:
    """The songs of tier `number` after `after_id`, with the parameters of the filters named, in id order."""
    clause = search.matches_parameter(postgres, f"tier_{number}")
    if excluded:
        clause = clause & ~search.matches_parameter(postgres, f"tier_{excluded}")
    return (
        sa.select(*READ_COLUMNS)
        .where(*_filters(filters), clause, col(Song.id) > bindparam("after_id", type_=sa.Integer))
        .order_by(col(Song.id))
        .limit(bindparam("limit", type_=sa.Integer))
    )


def _matching(query: SongQuery, found: search.Search | None) -> list[ColumnElement[bool]]:
    """The conditions of the songs that `query`'s filters and search match."""
    return [*_filters(_filter_values(query)), *([_found(found)] if found else [])]


async def export_songs(*, db: Database, query: SongQuery, file_format: Format) -> AsyncGenerator[bytes]:
    """Every song that `query`'s filters and search match, in id order, as `file_format` text, a chunk at a time.

    One statement: memory stays flat, and the songs are those of one snapshot
    of the catalog. `query`'s sort and paging are ignored.
    """
    found = await search.plan(db, query.q) if query.q else None

    async def export(transaction: Transaction) -> AsyncGenerator[bytes]:
        statement = (
            sa.select(*exporting.columns(file_format, db.dialect))
            .select_from(Song)
            .where(*_matching(query, found))
            .order_by(col(Song.id))
            .params(_filter_values(query))
        )
        async with aclosing(exporting.stream(await transaction.connection(), statement, file_format)) as chunks:
            async for chunk in chunks:
                yield chunk

    async with aclosing(db.read_stream(export)) as chunks:
        async for chunk in chunks:
            yield chunk


def _filter_values(query: SongQuery) -> dict[str, Any]:
    """The values of `query`'s filters, by the names of their parameters in `_filters`."""
    if query.year_from is not None and query.year_to is not None and query.year_from > query.year_to:
        raise InvalidParameter("query", "year_from", f"must not be after year_to ({query.year_to})")
    values: dict[str, Any] = {}
    if query.artist is not None:
        values["artist_key"] = song_key(query.artist)
    if query.name is not None:
        values["name_key"] = song_key(query.name)
    if query.year is not None:
        values["year"] = query.year
    if query.year_from is not None or query.year_to is not None:
        values |= {"year_from": query.year_from or YEAR_MIN, "year_to": query.year_to or YEAR_MAX}
    return values


def _filter_signature(values: Mapping[str, Any]) -> str:
    """The filters' part of a cursor's signature: a cursor resumes the listing it came from, no other."""
    # JSON: a value holding "&" or "=" cannot read as another filter.
    return "&" + json.dumps(sorted(values.items()), ensure_ascii=False) if values else ""


def _filters(parameters: Collection[str]) -> list[ColumnElement[bool]]:
    """The conditions of the filters whose parameters are named (values apart, so that the SQL is reused)."""
    conditions: list[ColumnElement[bool]] = []
    if "artist_key" in parameters:
        conditions.append(col(Song.artist_key) == bindparam("artist_key"))
    if "name_key" in parameters:
        conditions.append(col(Song.name_key) == bindparam("name_key"))
    if "year" in parameters:
        conditions.append(bindparam("year", type_=sa.Integer) == YEAR)  # typed: an estimate renders it inline
    if "year_from" in parameters:
        conditions.append(YEAR.between(bindparam("year_from"), bindparam("year_to")))
    return conditions


def _found(found: search.Search) -> ColumnElement[bool]:
    """The songs a search finds, at any tier (its words inline: a search is not compiled once)."""
    return search.matches(found, found.everything) if found.everything else false()


def _song_order(query: SongQuery, found: search.Search | None) -> tuple[str, list[SortKey]]:
    """The sort keys `query.sort` names, ending in id; and the signature its cursors carry."""
    spec = query.sort if query.sort is not None else "id"
    keys: list[SortKey] = []
    for part in (part.strip() for part in spec.split(",")):
        descending, name = part.startswith("-"), part.removeprefix("-")
        if any(key.name == name for key in keys):
            raise InvalidParameter("query", "sort", f"{name!r} is named twice")
        if name == "relevance" and query.q:
            raise InvalidParameter("query", "sort", "relevance sorts alone, best first")
        if name not in SORTABLE:
            choices = ", ".join([*SORTABLE, *(["relevance"] if query.q else [])])
            raise InvalidParameter("query", "sort", f"unknown sort key {name!r}; use {choices}")
        expression, kind = SORTABLE[name]
        keys.append(SortKey(name, expression, kind, descending))
    if keys[-1].name != "id":
        # Ties are broken by id, in the direction of the last key, so that one index serves both.
        keys.append(SortKey("id", col(Song.id), int, keys[-1].descending))
    signature = spec + (f"?{search_fold(query.q)}?{found.fingerprint}" if query.q and found else "")
    return signature, keys


async def list_artists(*, db: Database, query: ArtistQuery) -> Page[ArtistPublic]:
    """A page of the artists, with how many songs each has.

    `query.prefix` finds the artists whose name, or a word of it, starts with
    it, ignoring case and accents: "bea" finds The Beatles, "bjo" Björk.
    """
    spec = query.sort.strip() if query.sort is not None else "name"  # as /songs reads its sort
    # A cursor resumes the listing it came from: this sort, and this prefix.
    signature = spec + (_filter_signature({"prefix": song_key(query.prefix)}) if query.prefix else "")
    artist_key = col(Song.artist_key)
    songs = func.count()
    if spec.removeprefix("-") == "name":
        keys = [SortKey("name", artist_key, str, spec.startswith("-"))]
    elif spec.removeprefix("-") == "songs":
        descending = spec.startswith("-")
        keys = [SortKey("songs", songs, int, descending), SortKey("name", artist_key, str, descending)]
    else:
        raise InvalidParameter("query", "sort", f"unknown sort key {spec!r}; use name, -name, songs or -songs")
    # The artist's name as its songs spell it, the first by code point: on PostgreSQL as on SQLite, whatever
    # the database's collation (under ICU's en-US, "abba" comes before "ABBA").
    spelled = col(Song.artist).collate("C") if db.dialect == "postgresql" else col(Song.artist)
    statement: Select[*tuple[Any, ...]] = sa.select(
        artist_key.label("key"), func.min(spelled).label("name"), songs.label("songs")
    )
    statement = statement.group_by(artist_key)
    if query.prefix:
        statement = statement.where(_artist_starts(query.prefix))
    if query.cursor:
        values = decode_cursor(query.cursor, signature, [key.kind for key in keys])
        # Paging by name filters rows before grouping; by count, groups after it.
        statement = statement.where(after(keys, values)) if len(keys) == 1 else statement.having(after(keys, values))
    # One artist past the page: a next cursor only when there is one after it.
    statement = statement.order_by(*(key.ordering() for key in keys)).limit(query.limit + 1)
    rows = await db.read(lambda transaction: transaction.fetch(statement))
    next_cursor = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1]
        next_cursor = encode_cursor(signature, [last["key"]] if len(keys) == 1 else [last["songs"], last["key"]])
    return Page([ArtistPublic(name=row["name"], songs=row["songs"]) for row in rows[: query.limit]], next_cursor)


def _artist_starts(prefix: str) -> ColumnElement[bool]:
    """Artists whose name starts with `prefix` (ignoring case), or a word of whose name does (and accents)."""
    key = song_key(prefix)
    whole_name = and_(col(Song.artist_key) >= key, col(Song.artist_key) < key + "\U0010ffff")
    folded = search_fold(prefix)  # letters, digits and single spaces: nothing LIKE would read as a wildcard
    if not folded:
        return whole_name
    return or_(whole_name, (literal(" ") + col(Song.artist_search)).like(f"% {folded}%"))
