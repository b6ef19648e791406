"""The catalog: every read and write of songs, as plain async functions over a session."""

import functools
import json
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy import ColumnElement, Select, bindparam, delete, false, func, literal_column, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import exporting, search
from app.db import Database, dialect, write_connection
from app.errors import (
    AppError,
    BatchDuplicate,
    DuplicateSong,
    DuplicateSongs,
    InvalidParameter,
    NotFound,
    PreconditionFailed,
)
from app.formats import Format, RawRow
from app.importing import Import, OnConflict, Rejected
from app.models import (
    YEAR_MAX,
    YEAR_MIN,
    ArtistPublic,
    ArtistQuery,
    BatchItem,
    BatchResult,
    Song,
    SongCreate,
    SongQuery,
    SongRow,
    SongUpdate,
    derived_columns,
    etag,
    search_fold,
    song_key,
    utcnow,
)
from app.paging import SortKey, ValueKind, after, decode_cursor, encode_cursor

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
_INSERTED = ("name", "artist", "year", "name_key", "artist_key", "name_search", "artist_search")
_INSERT_SONG = (
    sa.insert(Song)
    .values({name: bindparam(name) for name in (*_INSERTED, "version", "created_at", "updated_at")})
    .returning(*READ_COLUMNS)
)
_FIND_SONG_ID = sa.select(col(Song.id)).where(
    col(Song.name_key) == bindparam("name_key"), col(Song.artist_key) == bindparam("artist_key")
)


async def create_song(*, db: Database, song_in: SongCreate) -> SongRow:
    """Adds a song; a `DuplicateSong` error if the catalog has it already. A hot path, on `Database`."""
    now = utcnow()
    values = song_in.model_dump()
    row = values | derived_columns(values) | {"version": 1, "created_at": now, "updated_at": now}
    try:
        created = await db.fetch(_INSERT_SONG, row, write=True)
    except (IntegrityError, asyncpg.UniqueViolationError):
        # The one constraint valid input can break: a song with the same keys is there.
        found = await db.fetch(_FIND_SONG_ID, {"name_key": row["name_key"], "artist_key": row["artist_key"]})
        if found:
            raise DuplicateSong(found[0]["id"]) from None
        raise
    return _song_row(created[0])


async def create_songs(*, session: AsyncSession, songs_in: list[SongCreate], on_conflict: OnConflict) -> BatchResult:
    """Adds songs, all in one transaction, under the conflict rule of `songbook import`.

    Under `OnConflict.ERROR`, a song already there (or twice in the batch) is a
    `DuplicateSongs` error and nothing is written.
    """
    rejected: list[Rejected] = []
    job = Import(await write_connection(session), on_conflict, rejected=rejected.append)
    await job.start()
    await job.stage("body", (RawRow(index, song.model_dump()) for index, song in enumerate(songs_in)))
    outcomes = await job.apply(outcomes=True)
    if rejected:
        await session.rollback()
        raise DuplicateSongs(
            [BatchDuplicate(index=row.line, existing_id=row.existing_id, same_as=row.same_as) for row in rejected]
        )
    await session.commit()
    # Ranks count the staged songs from 1, in the order given.
    items = [
        BatchItem(index=rank - 1, status=outcome.status, id=outcome.id) for rank, outcome in sorted(outcomes.items())
    ]
    statuses = [item.status for item in items]
    return BatchResult(
        created=statuses.count("created"),
        updated=statuses.count("updated"),
        duplicates=statuses.count("duplicate"),
        items=items,
    )


async def get_song(*, session: AsyncSession, song_id: int) -> Song:
    """Gets a song by its id, to change it."""
    song = await session.get(Song, song_id)
    if song is None:
        raise _not_found(song_id)
    return song


_READ_SONG = sa.select(*READ_COLUMNS).where(col(Song.id) == bindparam("song_id"))


async def read_song(*, db: Database, song_id: int) -> SongRow:
    """Gets a song by its id, to show it: the hot path, on `Database`."""
    rows = await db.fetch(_READ_SONG, {"song_id": song_id})
    if not rows:
        raise _not_found(song_id)
    return _song_row(rows[0])


_ROW_FIELDS = tuple(SongRow.__annotations__)


def _song_row(row: Mapping[Any, Any]) -> SongRow:
    return {field: row[field] for field in _ROW_FIELDS}  # type: ignore[return-value]


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


async def list_page(*, db: Database, query: SongQuery) -> Page[Mapping[str, Any]]:
    """A page of the songs that match `query`, in its order, without a search or a count: the hot path."""
    assert query.q is None
    statement, params, signature = _in_order(query, found=None)
    return _ordered_page(await db.fetch(statement, params), signature, query.limit)


async def list_songs(
    *, session: AsyncSession, query: SongQuery, count: Literal["exact", "estimated"] | None = None
) -> Page[Mapping[str, Any]]:
    """A page of the songs that match `query`, in its order; with their total if `count` asks for it."""
    # Planned once for the page and the count, so that both look for the same words.
    found = await search.plan(session, query.q) if query.q else None
    if found and (query.sort is None or query.sort.strip() == "relevance"):
        page = await _search_by_relevance(session=session, query=query, found=found)
    else:
        page = await _list_in_order(session=session, query=query, found=found)
    if count is not None:
        page.total = await _count_songs(session=session, query=query, found=found, estimate=count == "estimated")
    return page


async def _list_in_order(
    *, session: AsyncSession, query: SongQuery, found: search.Search | None
) -> Page[Mapping[str, Any]]:
    statement, params, signature = _in_order(query, found)
    rows = (await (await session.connection()).execute(statement, params)).mappings().all()
    return _ordered_page(rows, signature, query.limit)


def _in_order(query: SongQuery, found: search.Search | None) -> tuple[Select[Any], dict[str, Any], str]:
    """The statement of a page in `query`'s order, its parameters, and the signature of its cursors."""
    signature, keys = _song_order(query, found)
    params = _filter_values(query) | {"limit": query.limit}
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


def _ordered_page(rows: Sequence[Mapping[str, Any]], signature: str, limit: int) -> Page[Mapping[str, Any]]:
    next_cursor = None
    if len(rows) == limit:
        last = rows[-1]
        next_cursor = encode_cursor(signature, [last[f"key_{i}"] for i in range(len(last) - len(READ_COLUMNS))])
    return Page(list(rows), next_cursor)


async def _search_by_relevance(
    *, session: AsyncSession, query: SongQuery, found: search.Search
) -> Page[Mapping[str, Any]]:
    """The songs of each tier of `found` in turn, each tier in id order."""
    assert query.q is not None
    # A cursor holds the words searched for: if the vocabulary changed them
    # since, the walk must start again rather than skip or repeat songs.
    signature = f"relevance?{search_fold(query.q)}?{found.fingerprint}"
    tier, after_id = decode_cursor(query.cursor, signature, [int, int]) if query.cursor else (1, 0)
    tiers: list[ColumnElement[bool] | None] = []
    previous, previous_query = None, None
    for full_text_query in found.queries:
        clause = search.matches(found, full_text_query) if full_text_query else None
        if full_text_query == previous_query:  # a tier that adds no words adds no songs
            clause = None
        tiers.append(clause & ~previous if clause is not None and previous is not None else clause)
        if clause is not None:
            previous, previous_query = clause, full_text_query
    params = _filter_values(query)
    filters = _filters(params)
    page: list[tuple[int, Any]] = []
    for number, clause in enumerate(tiers, start=1):
        if clause is None or number < tier or len(page) == query.limit:
            continue
        # Each tier is its own query in id order: the database stops after the rows it needs.
        statement = sa.select(*READ_COLUMNS).where(*filters, clause, col(Song.id) > (after_id if number == tier else 0))
        rows = await (await session.connection()).execute(
            statement.order_by(col(Song.id)).limit(query.limit - len(page)), params
        )
        page += [(number, row) for row in rows.mappings()]
    next_cursor = None
    if len(page) == query.limit:
        last_tier, last_song = page[-1]
        next_cursor = encode_cursor(signature, [last_tier, last_song["id"]])
    return Page([song for _, song in page], next_cursor)


async def _count_songs(*, session: AsyncSession, query: SongQuery, found: search.Search | None, estimate: bool) -> int:
    """How many songs match `query`: exactly, or as PostgreSQL's planner estimates it."""
    params = _filter_values(query)
    filters = [*_filters(params), *([_found(found)] if found else [])]
    if estimate and dialect(session) == "postgresql":
        # The planner's row estimate costs no scan. SQLite has none: it counts.
        statement = select(col(Song.id)).where(*filters).params(params)
        sql = statement.compile(dialect=session.bind.dialect, compile_kwargs={"literal_binds": True})  # type: ignore[union-attr]
        connection = await session.connection()
        plan = (await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}")).scalar_one()
        return int((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"])
    return (await session.exec(select(func.count()).select_from(Song).where(*filters), params=params)).one()


async def export_songs(*, session: AsyncSession, query: SongQuery, file_format: Format) -> AsyncGenerator[bytes]:
    """Every song that `query`'s filters and search match, in id order, as `file_format` text, a chunk at a time.

    One statement: memory stays flat, and the songs are those of one snapshot
    of the catalog. `query`'s sort and paging are ignored.
    """
    found = await search.plan(session, query.q) if query.q else None
    statement = (
        select(*exporting.columns(file_format, dialect(session)))
        .select_from(Song)
        .where(*_filters(params := _filter_values(query)), *([_found(found)] if found else []))
        .order_by(col(Song.id))
        .params(params)
    )
    async with aclosing(exporting.stream(await session.connection(), statement, file_format)) as chunks:
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


def _filters(parameters: Collection[str]) -> list[ColumnElement[bool]]:
    """The conditions of the filters whose parameters are named (values apart, so that the SQL is reused)."""
    conditions: list[ColumnElement[bool]] = []
    if "artist_key" in parameters:
        conditions.append(col(Song.artist_key) == bindparam("artist_key"))
    if "name_key" in parameters:
        conditions.append(col(Song.name_key) == bindparam("name_key"))
    if "year" in parameters:
        conditions.append(bindparam("year") == YEAR)
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


async def list_artists(*, session: AsyncSession, query: ArtistQuery) -> Page[ArtistPublic]:
    """A page of the artists, with how many songs each has."""
    spec = query.sort or "name"
    artist_key = col(Song.artist_key)
    songs = func.count()
    if spec.removeprefix("-") == "name":
        keys = [SortKey("name", artist_key, str, spec.startswith("-"))]
    elif spec.removeprefix("-") == "songs":
        descending = spec.startswith("-")
        keys = [SortKey("songs", songs, int, descending), SortKey("name", artist_key, str, descending)]
    else:
        raise InvalidParameter("query", "sort", f"unknown sort key {spec!r}; use name, -name, songs or -songs")
    statement = select(artist_key, func.min(col(Song.artist)), songs).group_by(artist_key)
    if query.prefix:
        prefix = song_key(query.prefix)
        statement = statement.where(artist_key >= prefix, artist_key < prefix + "\U0010ffff")
    if query.cursor:
        values = decode_cursor(query.cursor, spec, [key.kind for key in keys])
        # Paging by name filters rows before grouping; by count, groups after it.
        statement = statement.where(after(keys, values)) if len(keys) == 1 else statement.having(after(keys, values))
    statement = statement.order_by(*(key.ordering() for key in keys)).limit(query.limit)
    rows = (await session.exec(statement)).all()
    next_cursor = None
    if len(rows) == query.limit:
        last_key, _, last_count = rows[-1]
        next_cursor = encode_cursor(spec, [last_key] if len(keys) == 1 else [last_count, last_key])
    return Page([ArtistPublic(name=name, songs=count) for _, name, count in rows], next_cursor)


async def update_song(
    *, session: AsyncSession, song_id: int, changes: SongUpdate, versions: Collection[int] | None = None
) -> Song:
    """Changes the fields given in `changes`; a `DuplicateSong` error if that makes it another song.

    With `versions`, only if the song is at one of them (else `PreconditionFailed`).
    """
    return await _write(session, song_id, changes.model_dump(exclude_unset=True), versions)


async def replace_song(
    *, session: AsyncSession, song_id: int, song_in: SongCreate, versions: Collection[int] | None = None
) -> Song:
    """Replaces every field of the song (a year left out is no year)."""
    return await _write(session, song_id, song_in.model_dump(), versions)


async def _write(session: AsyncSession, song_id: int, values: dict[str, Any], versions: Collection[int] | None) -> Song:
    if not values:
        current = await get_song(session=session, song_id=song_id)
        if versions is not None and current.version not in versions:
            raise PreconditionFailed(song_id, etag(current.version))
        return current
    # One UPDATE ... RETURNING: no read-then-write for a concurrent writer to slip
    # between, and the version it checks is the one it increments.
    statement = (
        update(Song)
        .where(col(Song.id) == song_id, *_at_version(versions))
        .values(**values, **derived_columns(values), version=col(Song.version) + 1, updated_at=utcnow())
        .returning(Song)
        .execution_options(populate_existing=True)
    )
    await write_connection(session)
    try:
        song: Song | None = (await session.exec(statement)).scalar_one_or_none()
        await session.commit()
    except IntegrityError:
        await session.rollback()
        current = await get_song(session=session, song_id=song_id)
        merged = {"name": current.name, "artist": current.artist} | values
        await _raise_if_duplicate(
            session=session, name_key=song_key(merged["name"]), artist_key=song_key(merged["artist"])
        )
        raise
    if song is None:
        raise await _why_not_written(session, song_id)
    return song


def _at_version(versions: Collection[int] | None) -> list[ColumnElement[bool]]:
    return [] if versions is None else [col(Song.version).in_(versions) if versions else false()]


async def _why_not_written(session: AsyncSession, song_id: int) -> AppError:
    version = (await session.exec(select(Song.version).where(Song.id == song_id))).first()
    return _not_found(song_id) if version is None else PreconditionFailed(song_id, etag(version))


async def delete_song(*, session: AsyncSession, song_id: int, versions: Collection[int] | None = None) -> None:
    """Removes a song from the catalog; with `versions`, only if it is at one of them."""
    statement = delete(Song).where(col(Song.id) == song_id, *_at_version(versions)).returning(col(Song.id))
    await write_connection(session)
    deleted = (await session.exec(statement)).scalar_one_or_none()
    await session.commit()
    if deleted is None:
        raise await _why_not_written(session, song_id)


async def find_song_id(*, session: AsyncSession, name_key: str, artist_key: str) -> int | None:
    """The id of the song with these keys, if the catalog has it."""
    statement = select(Song.id).where(Song.name_key == name_key, Song.artist_key == artist_key)
    return (await session.exec(statement)).first()


async def _raise_if_duplicate(*, session: AsyncSession, name_key: str, artist_key: str) -> None:
    existing_id = await find_song_id(session=session, name_key=name_key, artist_key=artist_key)
    if existing_id is not None:
        raise DuplicateSong(existing_id)


def _not_found(song_id: int) -> NotFound:
    return NotFound(f"No song has id {song_id}.")
