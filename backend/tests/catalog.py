"""Reading a catalog straight from its database, for tests of commands that write it."""

import asyncio
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app import db, keys
from app.config import Settings
from app.db import configure_sqlite
from app.models import ApiKeyCreate, Scope


async def empty_catalog(engine: AsyncEngine) -> None:
    """Deletes every song and API key, and restarts the ids."""
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(text("TRUNCATE song, search_term, idempotency_key, api_key RESTART IDENTITY"))
        else:
            await connection.execute(text("DELETE FROM song"))
            await connection.execute(text("DELETE FROM idempotency_key"))
            await connection.execute(text("DELETE FROM api_key"))
            await connection.execute(text("DELETE FROM sqlite_sequence"))


def empty(url: URL) -> None:
    """`empty_catalog`, for tests that are not async themselves."""

    async def run() -> None:
        engine = create_async_engine(url)
        try:
            await empty_catalog(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def new_key(settings: Settings, scope: Scope, name: str | None = None) -> str:
    """A new API key in the database of `settings`, for tests that run an app of their own."""

    async def make() -> str:
        async with db.connect(settings) as database:
            key_in = ApiKeyCreate(name=name or f"test {scope} {uuid.uuid4().hex[:8]}", scope=scope)
            return (await keys.create_key(db=database, key_in=key_in)).key

    return asyncio.run(make())


def rows(url: URL) -> list[tuple[int, str, str, int | None]]:
    """Every song as (id, name, artist, year), in id order."""
    return [row[:4] for row in full_rows(url)]


def full_rows(url: URL) -> list[tuple[Any, ...]]:
    """Every song as (id, name, artist, year, created_at, updated_at), in id order."""
    return asyncio.run(_execute(url, "SELECT id, name, artist, year, created_at, updated_at FROM song ORDER BY id"))


def search(url: URL, word: str) -> list[int]:
    """The ids of the songs whose full-text index has `word`."""
    if url.get_backend_name() == "postgresql":
        sql = "SELECT id FROM song WHERE search_vector @@ to_tsquery('simple', :word) ORDER BY id"
    else:
        sql = "SELECT rowid FROM song_search WHERE song_search MATCH :word ORDER BY rowid"
    return [row[0] for row in asyncio.run(_execute(url, sql, {"word": word}))]


def alter(url: URL, sql: str) -> None:
    """One statement that changes the database, committed: what a bug or an operator might do."""
    asyncio.run(_execute(url, sql, commit=True))


def query(url: URL, sql: str, **parameters: object) -> list[tuple[Any, ...]]:
    """The rows of one statement."""
    return asyncio.run(_execute(url, sql, parameters))


async def _execute(
    url: URL, sql: str, parameters: dict[str, object] | None = None, *, commit: bool = False
) -> list[tuple[Any, ...]]:
    engine = create_async_engine(url)
    if url.get_backend_name() == "sqlite":
        configure_sqlite(engine)
    try:
        async with engine.begin() if commit else engine.connect() as connection:
            result = await connection.execute(text(sql), parameters or {})
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


# What makes the song table what the migrations made it: a large import that swaps in a copy of it
# (app/swap.py) must leave every part as it was.
_SONG_TABLE_POSTGRESQL = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, CAST(a.attgenerated AS text), "
    "CAST(a.attidentity AS text), pg_get_expr(d.adbin, d.adrelid), coalesce(co.collname, '') "
    "FROM pg_attribute AS a LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "LEFT JOIN pg_collation AS co ON co.oid = a.attcollation "
    "WHERE a.attrelid = 'song'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'song' ORDER BY indexname",
    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'song'::regclass ORDER BY conname",
    "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'song'::regclass AND NOT tgisinternal "
    "ORDER BY tgname",
    "SELECT pg_get_serial_sequence('song', 'id'), reloptions, obj_description(oid, 'pg_class'), "
    "pg_get_userbyid(relowner), relnamespace::regnamespace::text FROM pg_class WHERE oid = 'song'::regclass",
    # The privileges in effect: a table never granted on has none written down, its owner's all the same.
    "SELECT g.grantee, g.privilege_type, g.is_grantable FROM pg_class AS c, "
    "aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) AS g WHERE c.oid = 'song'::regclass "
    "ORDER BY 1, 2, 3",
)
_SONG_TABLE_SQLITE = ("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'song' ORDER BY type, name",)


async def describe_song_table(connection: AsyncConnection) -> list[list[tuple[Any, ...]]]:
    """The song table's columns, indexes, constraints, triggers, sequence and options, as the catalog lists them."""
    statements = _SONG_TABLE_POSTGRESQL if connection.dialect.name == "postgresql" else _SONG_TABLE_SQLITE
    return [[tuple(row) for row in await connection.execute(text(sql))] for sql in statements]


def song_table(url: URL) -> list[list[tuple[Any, ...]]]:
    """`describe_song_table`, for tests that are not async themselves."""

    async def run() -> list[list[tuple[Any, ...]]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return await describe_song_table(connection)
        finally:
            await engine.dispose()

    return asyncio.run(run())
