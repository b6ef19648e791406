"""Reading a catalog straight from its database, for tests of commands that write it."""

import asyncio
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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
