"""The database engine and the sessions the routes are given."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings

CONNECT_TIMEOUT_SECONDS = 5
COMMAND_TIMEOUT_MARGIN_SECONDS = 2


def create_engine(settings: Settings) -> AsyncEngine:
    """The engine for the configured database: asyncpg for PostgreSQL, aiosqlite for SQLite."""
    url = settings.sqlalchemy_url
    if url.get_backend_name() == "sqlite":
        ensure_sqlite_dir(url)
        return configure_sqlite(create_async_engine(url, echo=settings.sql_echo))
    return create_async_engine(
        url,
        echo=settings.sql_echo,
        pool_size=settings.pool_size,
        max_overflow=0,
        connect_args={
            # asyncpg would wait a minute for an unreachable server.
            "timeout": CONNECT_TIMEOUT_SECONDS,
            # A statement that runs (or waits for a lock) longer is cancelled: a 503, never a hang.
            "server_settings": {"statement_timeout": str(settings.statement_timeout_ms)},
            # And if the server goes silent (a network cut), the client stops waiting too.
            "command_timeout": settings.statement_timeout_ms / 1000 + COMMAND_TIMEOUT_MARGIN_SECONDS
            if settings.statement_timeout_ms
            else None,
        },
    )


def ensure_sqlite_dir(url: URL) -> None:
    """Creates the folder of a SQLite database file, so that a fresh machine can start."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def configure_sqlite(engine: AsyncEngine) -> AsyncEngine:
    """Sets up every connection of a SQLite engine, and makes its transactions real.

    Python's sqlite3 driver begins a transaction only before INSERT, UPDATE or
    DELETE, so DDL and reads run outside one: SQLAlchemy's documented recipe is
    to turn that off and emit BEGIN itself, which makes DDL transactional too.
    """
    event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
    return engine


def _on_sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))


# A SQLite transaction that begins with BEGIN reads first and takes the write
# lock at its first write; if another writer committed in between, SQLite
# fails it at once ("database is locked"), whatever the busy timeout. One
# that writes takes the lock at BEGIN instead, and waits its turn.
WRITE_OPTIONS = {"sqlite_begin": "BEGIN IMMEDIATE"}


def dialect(session: AsyncSession) -> str:
    """The name of the database a session talks to: "postgresql" or "sqlite"."""
    return session.bind.dialect.name  # type: ignore[union-attr]


async def write_connection(session: AsyncSession) -> AsyncConnection:
    """The session's connection, for a unit of work that writes; call it before its first statement."""
    return await session.connection(execution_options=WRITE_OPTIONS)


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; busy_timeout makes a writer wait
    # for the lock instead of failing at once with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The one session factory of the process; objects stay readable after commit."""
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for one request, closed (and rolled back if uncommitted) after it."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
