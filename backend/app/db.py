"""The one way to the database: `Database`, made once per process and handed to the catalog functions.

Callers ask the catalog (`songs`, `keys`, `importing`) for what they need and
give it the `Database`; how a call reaches the database is decided here:

- `Database.fetch` runs one statement in a transaction of its own. On
  PostgreSQL it compiles the statement once and runs it on a bare asyncpg
  pool; on SQLite, on the engine.
- `Database.transaction` is a unit of work on a SQLModel session: committed
  when the block ends, rolled back if it raises. One that writes takes
  SQLite's write lock at BEGIN. `Database.read` and `Database.read_stream`
  run a reading one, again on a fresh connection if its connection died.
- `Database.atomic` makes one transaction of a block: this task's `fetch`es
  and `transaction`s in it all run in it (an idempotent write: its claim, the
  write and its answer).

With read replicas (`app.replicas`), a read may go to one instead.
"""

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast
from uuid import uuid4

import asyncpg
import sqlalchemy as sa
from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection, QueuePool
from sqlalchemy.sql import Executable, Select, TextClause
from sqlalchemy.sql.dml import UpdateBase
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.errors import NoWritableDatabase
from app.metrics import PoolUsage
from app.replicas import Replica, Replicas, Watch
from app.search import NearWords

logger = logging.getLogger(__name__)

# What a failing database raises, through SQLAlchemy or from asyncpg itself.
DATABASE_ERRORS = (DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
# A connection that died or could not be made (a restart, a failover, a terminated
# backend): a read is tried once more on a fresh one. TimeoutError (an OSError) is the
# wait for the pool, and is not tried again.
LOST_CONNECTION = (
    OSError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
# The values of target_session_attrs that ask for a server that takes writes.
WRITERS = ("read-write", "primary")
# "cannot execute ... in a read-only transaction": songbook asks for none, so the server is a standby.
READ_ONLY_SQLSTATE = "25006"
# What a statement that breaks a constraint raises, on either way to the database.
INTEGRITY_ERRORS = (IntegrityError, asyncpg.IntegrityConstraintViolationError)

CONNECT_TIMEOUT_SECONDS = 5
COMMAND_TIMEOUT_MARGIN_SECONDS = 2
MAX_COMPILED = 1000  # statements; then all are forgotten, and compiled again as they come
POOL_TIMEOUT_SECONDS = 30
PING_TIMEOUT_SECONDS = 2

Statement = Select[*tuple[Any, ...]] | UpdateBase | TextClause
T = TypeVar("T")


# What a read that failed may be tried again for, if `lost_connection` says so.
READ_AGAIN_ERRORS = (*DATABASE_ERRORS, asyncpg.InternalClientError)


def lost_connection(exc: BaseException) -> bool:
    """Whether `exc` says the connection died or could not be made (not a wait for the pool that ran out).

    Through SQLAlchemy, the driver's error is the cause of the DBAPI error it
    wraps: `DBAPIError.orig.__cause__`.
    """
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = (exc.orig.__cause__ or exc.orig) if exc.orig is not None else exc
    # asyncpg's InternalClientError: a connection the server closed while it sat idle (its goodbye read
    # first) refuses the statement before sending it. An InterfaceError that says "connection is closed"
    # (SQLAlchemy's own rule) is one it knows closed already, refusing to be used.
    lost = (*LOST_CONNECTION, asyncpg.InternalClientError)
    closed = isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)
    return (isinstance(exc, lost) or closed) and not isinstance(exc, TimeoutError)


class Database:
    """The database of one process: its engine, its session maker, on PostgreSQL the hot paths' pool, and
    what the search keeps of its vocabulary.

    SQLAlchemy's session, and even its Core connection, cost several times the
    query on a small one (backend/README.md, "Speed"): the statements of the
    hot paths go through `fetch`. They are SQLAlchemy's, built from the
    SQLModel tables: the models stay the one description of the schema.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        pool: asyncpg.Pool | None,
        anywhere: "Anywhere | None" = None,
        replicas: Replicas | None = None,
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.replicas = replicas
        self._sessionmaker = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        self._anywhere = anywhere
        # Turns at the pool, first come first served. asyncpg's pool lets a request that
        # just arrived take a connection given back before one already waiting wakes up:
        # under load some requests waited again and again (p99 of GET /songs/{id} 37-51 ms
        # against 16-28 ms with this, backend/README.md, "Speed"). asyncio's semaphore is fair.
        self._turns = _Turns(pool.get_max_size() if pool is not None else 1)
        self._compiled: dict[Statement, tuple[str, tuple[str, ...]]] = {}
        # What the search found close to each query word, kept a few seconds: see `search`.
        self.near_words = NearWords()

    @property
    def dialect(self) -> str:
        """The database's kind: "postgresql" or "sqlite"."""
        return self.engine.dialect.name

    async def fetch(
        self, statement: Statement, params: Mapping[str, Any], *, write: bool = False, primary: bool = False
    ) -> Sequence[Mapping[str, Any]]:
        """The rows of `statement` with `params`, in a transaction of its own.

        The statement is compiled the first time it comes: make each once (a
        module constant, or one per shape, cached) and give its values apart.
        `write` says the statement writes (SQLite then takes its lock at BEGIN).
        A read may go to a replica (`app.replicas`) unless it must see the `primary`.
        """
        unit = _atomic.get()
        if unit is not None and unit.owns(self):
            return await unit.fetch(statement, params)
        if self.pool is None:
            return await self._execute(statement, params, write)
        sql, names = self._compile(statement)
        values = [params[name] for name in names]
        if self.replicas is not None and (replicated := await self._replicated(sql, values, write, primary)):
            return replicated.rows
        sent = False
        try:
            # As `_connection` does, written out: its generator costs about a tenth of a small read (py-spy).
            async with asyncio.timeout(POOL_TIMEOUT_SECONDS) as wait, self._turns, self.pool.acquire() as connection:
                wait.reschedule(None)
                sent = True
                rows: list[Mapping[str, Any]] = await _fetch(connection, sql, values)
        except NoWritableDatabase:
            if write or self._anywhere is None:
                raise
            return await self._anywhere.fetch(sql, values)
        except asyncpg.ReadOnlySQLTransactionError:
            # The server no longer takes writes: the old primary of a switchover, still reached through
            # PgBouncer, whose connections outlive the server's. Refused, so not done: once more, on a new one.
            await self.pool.expire_connections()
            async with self._connection() as connection:
                return await _fetch(connection, sql, values)
        except (*LOST_CONNECTION, asyncpg.InternalClientError) as exc:
            # A connection that the server closed while it was idle (a shutdown's message came first)
            # refuses the statement before sending it ("cannot switch to state"): nothing was sent.
            sent = sent and not isinstance(exc, asyncpg.InternalClientError)
            if isinstance(exc, TimeoutError) or (write and sent):
                raise  # a write the server may have done is not done twice: Idempotency-Key is for that
            # A read, or a write that never reached the server: once more, at once, on a new connection.
            # What ended one connection (a restart, a failover) likely ended the pool's others.
            await self.pool.expire_connections()
            try:
                async with self._connection() as connection:
                    return await _fetch(connection, sql, values)
            except NoWritableDatabase:
                if write or self._anywhere is None:
                    raise
                return await self._anywhere.fetch(sql, values)
        return rows

    async def _replicated(self, sql: str, values: Sequence[Any], write: bool, primary: bool) -> "_Rows | None":
        """A read's rows from a replica, if it may and one answers; None for the primary to answer."""
        assert self.replicas is not None
        if write:
            self.replicas.wrote()
            return None
        replica = None if primary else self.replicas.choose()
        rows = await self._fetch_on_replica(replica, sql, values) if replica is not None else None
        return _Rows(rows) if rows is not None else None

    async def _fetch_on_replica(
        self, replica: Replica, sql: str, values: Sequence[Any]
    ) -> list[Mapping[str, Any]] | None:
        """The rows from `replica`; None if it failed, for the primary to answer."""
        assert self.replicas is not None
        try:
            async with asyncio.timeout(POOL_TIMEOUT_SECONDS) as wait, replica.turns, replica.pool.acquire() as held:
                wait.reschedule(None)
                rows = await _fetch(held, sql, values)
            replica.reads.inc()
            return rows
        except (*DATABASE_ERRORS, asyncpg.InternalClientError) as exc:
            lost = lost_connection(exc)  # not a statement or a wait for the pool that timed out
            self.replicas.failed(replica, exc, lost=lost)
            if lost:
                await replica.pool.expire_connections()
            return None

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = False) -> AsyncIterator["Transaction"]:
        """A unit of work on a session: one that `write`s is committed when the block ends; any is
        rolled back if it raises (and a read, which has nothing to commit, when it ends).

        One that `write`s begins with `BEGIN IMMEDIATE` on SQLite (see `WRITE_OPTIONS`).
        Inside an `atomic` block it is a savepoint of the block's transaction.
        """
        unit = _atomic.get()
        if unit is not None and unit.owns(self):
            async with unit.transaction(write=write) as joined:
                yield joined
            return
        reading = not write and self.replicas is not None
        async with await self._read_session() if reading else self._sessionmaker() as session:
            if write:
                await session.connection(execution_options=WRITE_OPTIONS)
                if self.replicas is not None:
                    self.replicas.wrote()
            try:
                yield Transaction(session)
            except READ_AGAIN_ERRORS as exc:
                if _lost_past_sqlalchemy(exc):
                    await _drop_connection(session, exc)
                raise
            if write:
                await session.commit()

    async def read(self, work: Callable[["Transaction"], Awaitable[T]]) -> T:
        """What `work` gives in a reading `transaction`; done once more, at once, if its connection died
        before or while it ran (a restart, a failover, an ended backend).

        A read has nothing to undo: the second time is on a fresh connection,
        since the pool checks each one it hands out (`pool_pre_ping`). While
        no server takes writes, it runs on any that answers.
        """
        try:
            return await self._read_once(work)
        except READ_AGAIN_ERRORS as exc:
            if not lost_connection(exc):
                raise
        return await self._read_once(work)

    async def _read_once(self, work: Callable[["Transaction"], Awaitable[T]]) -> T:
        try:
            async with self.transaction() as transaction:
                return await work(transaction)
        except NoWritableDatabase:
            if self._anywhere is None:
                raise
        async with self._anywhere.transaction() as transaction:
            return await work(transaction)

    async def read_stream(self, work: Callable[["Transaction"], AsyncGenerator[T]]) -> AsyncGenerator[T]:
        """What `work` yields in a reading `transaction`; begun once more, at once, if its connection died
        before the reader was given anything (after that, it has part of the answer: it fails).

        Each item is given once the next one, or the end, has come: an answer
        of one item (a small export) is whole before any of it is sent. While
        no server takes writes, it runs on any that answers.
        """
        transactions: list[Callable[[], contextlib.AbstractAsyncContextManager[Transaction]]]
        transactions = [self.transaction, self.transaction]
        while transactions:
            held: list[T] = []
            started = False
            try:
                async with transactions.pop()() as transaction, contextlib.aclosing(work(transaction)) as items:
                    async for item in items:
                        if held:
                            started = True
                            yield held.pop()
                        held.append(item)
            except NoWritableDatabase:
                if started or self._anywhere is None:
                    raise
                transactions = [self._anywhere.transaction]
                continue
            except READ_AGAIN_ERRORS as exc:
                if started or not transactions or not lost_connection(exc):
                    raise
                continue
            for item in held:
                yield item
            return

    async def _read_session(self) -> AsyncSession:
        """A session on a replica, connected, if the request may read on one and one answers; else the primary's."""
        assert self.replicas is not None
        replica = self.replicas.choose()
        if replica is None:
            return self._sessionmaker()
        session = replica.sessionmaker()
        try:
            connection = await session.connection()
            if (await connection.get_raw_connection()).driver_connection.is_closed():  # type: ignore[union-attr]
                # The replica ended it since it was pooled (a restart, a stop): no statement has gone.
                await connection.invalidate()
                raise asyncpg.ConnectionDoesNotExistError("the replica closed the connection")
        except DATABASE_ERRORS as exc:
            await session.close()
            self.replicas.failed(replica, exc, lost=True)  # it could not be reached
            return self._sessionmaker()
        replica.reads.inc()
        return session

    @contextlib.asynccontextmanager
    async def atomic(self, *, lock: int, on_session: bool = False) -> AsyncIterator["Atomic"]:
        """One transaction for the block: committed when it ends, rolled back if it raises.

        This task's `fetch`es and `transaction`s in the block run in it. On
        PostgreSQL it first takes the transaction-scoped advisory lock `lock`
        (a 64-bit number), without waiting: `Locked` if another transaction
        holds it. On SQLite it begins with `BEGIN IMMEDIATE`: writers take turns,
        so a second one waits for the first to commit. `on_session` for a block
        whose work runs on a session (`transaction`, as a batch's does); the
        others run on a connection of the hot paths' pool, as `fetch` does.
        """
        unit: Atomic
        if self.replicas is not None:
            self.replicas.wrote()  # its answer tells where the primary was, for reads that must see it
        if self.pool is not None and not on_session:
            async with asyncio.timeout(POOL_TIMEOUT_SECONDS) as wait, self._turns, self.pool.acquire() as connection:
                wait.reschedule(None)
                unit = _AtomicOnPool(self, asyncio.current_task(), connection)
                async with _running(unit, lock):
                    yield unit
            return
        async with self.engine.connect() as engine_connection:
            unit = _AtomicOnEngine(self, asyncio.current_task(), engine_connection)
            async with _running(unit, lock):
                yield unit

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        assert self.pool is not None
        # A connection is waited for as long as the engine's pool would, then a 503. Not
        # with acquire(timeout=...): before Python 3.12 that makes a task per request.
        async with asyncio.timeout(POOL_TIMEOUT_SECONDS) as wait, self._turns, self.pool.acquire() as connection:
            wait.reschedule(None)  # the statement has timeouts of its own
            yield connection

    async def _execute(self, statement: Statement, params: Mapping[str, Any], write: bool) -> list[dict[str, Any]]:
        async with self.engine.connect() as connection:
            if write:
                await connection.execution_options(**WRITE_OPTIONS)
            result = await connection.execute(statement, dict(params))
            rows = [dict(row) for row in result.mappings()] if result.returns_rows else []
            await connection.commit()
        return rows

    def _compile(self, statement: Statement) -> tuple[str, tuple[str, ...]]:
        found = self._compiled.get(statement)
        if found is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            # The values go to asyncpg as they are: no parameter may need SQLAlchemy at
            # execution (an expanding IN).
            assert not compiled.post_compile_params, "a statement for Database cannot expand parameters"
            # Nor bind a value of its own (a literal in an expression): only `params` are passed.
            assert all(bind.required for bind in compiled.binds.values()), "a statement for Database binds a value"
            found = (str(compiled), tuple(compiled.positiontup or ()))
            if len(self._compiled) >= MAX_COMPILED:
                self._compiled.clear()  # shapes no longer used go; those in use come back at once
            self._compiled[statement] = found
        return found

    async def ping(self) -> None:
        """Raises if the hot paths' pool cannot reach the database soon.

        It takes no turn: an instance with requests waiting for the pool is
        busy, not broken, and its health check must answer within seconds.
        """
        if self.pool is not None:
            async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                await self.pool.fetchval("SELECT 1")

    async def estimated_rows(self, statement: Select[Any], params: Mapping[str, Any]) -> int:
        """How many rows `statement` would give, as PostgreSQL's planner estimates it: no scan.

        SQLite has no estimate: it counts. Tried once more if the connection died, as `read` is.
        """
        try:
            return await self._estimated_rows(statement.params(dict(params)))
        except READ_AGAIN_ERRORS as exc:
            if not lost_connection(exc):
                raise
        return await self._estimated_rows(statement.params(dict(params)))

    async def _estimated_rows(self, statement: Select[Any]) -> int:
        async with self.engine.connect() as connection:
            if self.dialect != "postgresql":
                counted = sa.select(sa.func.count()).select_from(statement.subquery())
                return int((await connection.execute(counted)).scalar_one())
            # Inline values: EXPLAIN takes no parameters.
            sql = statement.compile(dialect=self.engine.dialect, compile_kwargs={"literal_binds": True})
            plan = (await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}")).scalar_one()
        return int((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"])

    async def analyze(self) -> None:
        """Fresh statistics for the planner, after a bulk load; on PostgreSQL VACUUM also
        merges the full-text index's pending entries."""
        if self.dialect == "postgresql":
            async with self.engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.exec_driver_sql("VACUUM ANALYZE")
        else:
            async with self.engine.begin() as connection:
                await connection.exec_driver_sql("ANALYZE")

    def usage(self) -> list[PoolUsage]:
        """Each pool's connections, used and idle, and the requests waiting for one, as they are now."""
        pools = []
        if self.pool is not None:
            idle = self.pool.get_idle_size()
            used = self.pool.get_size() - idle
            pools.append(PoolUsage("hot", used, idle, self.pool.get_max_size(), self._turns.waiting))
        for replica in self.replicas.replicas if self.replicas is not None else ():
            idle = replica.pool.get_idle_size()
            used, most = replica.pool.get_size() - idle, replica.pool.get_max_size()
            waiting = replica.turns.waiting if isinstance(replica.turns, _Turns) else None
            pools.append(PoolUsage(f"replica {replica.name}", used, idle, most, waiting))
        sessions = self.engine.pool
        if isinstance(sessions, QueuePool):
            # SQLAlchemy's pool does not tell how many wait for it.
            most = sessions.size() + max(sessions._max_overflow, 0)
            pools.append(PoolUsage("session", sessions.checkedout(), sessions.checkedin(), most, None))
        return pools

    async def close(self) -> None:
        await self.near_words.close()
        if self.replicas is not None:
            await self.replicas.close()
        if self.pool is not None:
            await self.pool.close()
        if self._anywhere is not None:
            await self._anywhere.engine.dispose()
        await self.engine.dispose()


@dataclass
class Anywhere:
    """Reads while none of a multi-host URL's servers takes writes (a switchover, a failover): on any that answers.

    A connection for each read, made when needed (there is none to keep
    between failovers), and no more at once than the pool's size. A standby
    may be a little behind: such a read may miss a write made in the last
    moments (synchronous replication waits for the standby to have the
    write, not to show it).
    """

    engine: AsyncEngine  # without a pool
    connect: Callable[[], Awaitable[asyncpg.Connection]]
    turns: asyncio.Semaphore

    async def fetch(self, sql: str, values: Sequence[Any]) -> list[Mapping[str, Any]]:
        async with asyncio.timeout(POOL_TIMEOUT_SECONDS) as wait, self.turns:
            wait.reschedule(None)  # the connection and the statement have timeouts of their own
            connection = await self.connect()
            try:
                return await connection.fetch(sql, *values)  # type: ignore[no-any-return]
            finally:
                connection.terminate()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator["Transaction"]:
        async with self.turns, AsyncSession(self.engine, expire_on_commit=False) as session:
            yield Transaction(session)


@dataclass
class _Rows:
    """Rows a replica answered (an empty list of them is an answer too)."""

    rows: list[Mapping[str, Any]]


class _Turns(asyncio.Semaphore):
    """A semaphore that counts who waits for it."""

    waiting = 0

    async def acquire(self) -> Literal[True]:
        if not self.locked():
            return await super().acquire()
        self.waiting += 1
        try:
            return await super().acquire()
        finally:
            self.waiting -= 1


@dataclass(frozen=True)
class Transaction:
    """A unit of work (`Database.transaction`): its session, and its statements' rows as `fetch` gives them."""

    session: AsyncSession

    async def fetch(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Sequence[Mapping[str, Any]]:
        """The rows of `statement` with `params`, in this transaction."""
        result = await (await self.session.connection()).execute(statement, dict(params or {}))
        return cast(Sequence[Mapping[str, Any]], result.mappings().all() if result.returns_rows else [])

    async def connection(self) -> AsyncConnection:
        """The transaction's connection, for work below statements (a COPY, a temporary table)."""
        return await self.session.connection()

    async def rollback(self) -> None:
        """Undoes the work so far (a dry run): the block then commits nothing."""
        await self.session.rollback()


async def _fetch(connection: asyncpg.Connection, sql: str, values: Sequence[Any]) -> list[Mapping[str, Any]]:
    """`connection.fetch`, after which a connection that failed for any reason but the server's answer is
    closed: its protocol may be mid-operation, and the pool would hand it out as it is."""
    try:
        return await connection.fetch(sql, *values)  # type: ignore[no-any-return]
    except asyncpg.PostgresError:
        raise  # the server answered: the connection is as good as before
    except BaseException:
        connection.terminate()
        raise


class Locked(Exception):
    """The lock `Database.atomic` was to take is another transaction's: the work it guards is under way."""


# The savepoint every atomic block starts with, after its lock: what `Atomic.undo` goes back to.
SAVEPOINT = "songbook_atomic"


class Atomic:
    """The transaction of a `Database.atomic` block.

    It begins with a savepoint, after the lock: `undo` rolls back the
    block's writes and keeps the lock. A statement that fails undoes them
    too (a failed statement leaves a PostgreSQL transaction unusable until
    then): a refused write can look up why, and its answer still be kept.
    """

    def __init__(self, database: Database, task: asyncio.Task[Any] | None) -> None:
        self.database = database
        self.task = task

    def owns(self, database: Database) -> bool:
        # A task started inside the block inherits it, not the right to use its connection.
        return database is self.database and asyncio.current_task() is self.task

    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        """The rows of `statement` with `params`, in the block's transaction."""
        raise NotImplementedError

    async def undo(self) -> None:
        """Rolls back what the block wrote so far; its lock stays taken."""
        raise NotImplementedError

    def transaction(self, *, write: bool) -> contextlib.AbstractAsyncContextManager[Transaction]:
        raise NotImplementedError

    async def _begin(self, lock: int) -> None:
        raise NotImplementedError

    async def _end(self, *, commit: bool) -> None:
        raise NotImplementedError


@contextlib.asynccontextmanager
async def _running(unit: Atomic, lock: int) -> AsyncIterator[None]:
    await unit._begin(lock)
    token = _atomic.set(unit)
    try:
        yield
    except BaseException:
        _atomic.reset(token)
        # What failed may have been the connection: the error to tell is the first one.
        with contextlib.suppress(Exception):
            await unit._end(commit=False)
        raise
    _atomic.reset(token)
    await unit._end(commit=True)


class _AtomicOnPool(Atomic):
    """An atomic block on a bare asyncpg connection (PostgreSQL): the hot paths' statements, compiled once."""

    def __init__(self, database: Database, task: asyncio.Task[Any] | None, connection: asyncpg.Connection) -> None:
        super().__init__(database, task)
        self.connection = connection

    async def _begin(self, lock: int) -> None:
        # One round trip: BEGIN, the lock (a DO block, so that a taken lock is an error that
        # ends the statements) and the savepoint. The lock is a number we made: safe inline.
        try:
            await self.connection.execute(
                f"BEGIN; DO $$BEGIN IF NOT pg_try_advisory_xact_lock({int(lock)}) THEN "
                "RAISE EXCEPTION USING ERRCODE = 'lock_not_available'; END IF; END$$; "
                f"SAVEPOINT {SAVEPOINT}"
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self._end(commit=False)
            if isinstance(exc, asyncpg.LockNotAvailableError):
                raise Locked from None
            raise

    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        sql, names = self.database._compile(statement)
        try:
            return await _fetch(self.connection, sql, [params[name] for name in names])
        except asyncpg.PostgresError:
            await self.undo()
            raise

    async def undo(self) -> None:
        await self.connection.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")

    def transaction(self, *, write: bool) -> contextlib.AbstractAsyncContextManager[Transaction]:
        raise RuntimeError("a session's work in an atomic block needs Database.atomic(on_session=True)")

    async def _end(self, *, commit: bool) -> None:
        if self.connection.is_closed():
            return
        try:
            await self.connection.execute("COMMIT" if commit else "ROLLBACK")
        except asyncpg.PostgresError:
            raise  # the server answered: the connection is as good as before
        except BaseException:
            self.connection.terminate()  # mid-operation: the pool must not hand it out as it is
            raise


class _AtomicOnEngine(Atomic):
    """An atomic block on a SQLAlchemy connection: SQLite's, or PostgreSQL's for work on a session."""

    def __init__(self, database: Database, task: asyncio.Task[Any] | None, connection: AsyncConnection) -> None:
        super().__init__(database, task)
        self.connection = connection

    async def _begin(self, lock: int) -> None:
        if self.database.dialect == "sqlite":
            await self.connection.execution_options(**WRITE_OPTIONS)
        await self.connection.begin()
        if self.database.dialect == "postgresql":
            taken = await self.connection.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(lock)))
            if not taken:
                await self.connection.rollback()
                raise Locked
        await self.connection.exec_driver_sql(f"SAVEPOINT {SAVEPOINT}")

    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        try:
            result = await self.connection.execute(statement, dict(params))
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                await self.undo()
            raise
        return [dict(row) for row in result.mappings()] if result.returns_rows else []

    async def undo(self) -> None:
        await self.connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[Transaction]:
        # The session's own savepoint inside the block's transaction: its commit releases it.
        database = self.database
        async with database._sessionmaker(bind=self.connection, join_transaction_mode="create_savepoint") as session:
            try:
                yield Transaction(session)
            except READ_AGAIN_ERRORS as exc:
                if _lost_past_sqlalchemy(exc):
                    await _drop_connection(session, exc)  # the block's: no savepoint rolled back on it
                raise
            if write:
                await session.commit()

    async def _end(self, *, commit: bool) -> None:
        if commit:
            await self.connection.commit()
        else:
            await self.connection.rollback()


_atomic: ContextVar[Atomic | None] = ContextVar("songbook_atomic", default=None)


async def open_database(settings: Settings, *, long_running: bool = False) -> Database:
    """The database of `settings`; `long_running` for a command that runs as long as its data
    (an import, an export): without a statement timeout."""
    if long_running:
        settings = settings.model_copy(update={"statement_timeout_ms": 0})
    connector = _Connector(pgbouncer=settings.pgbouncer)
    engine = _create_engine(settings, connector)
    pool = await _create_pool(settings, engine, connector)
    replicas = await _open_replicas(settings, engine, pool) if pool is not None and settings.replica_urls else None
    return Database(engine, pool, _anywhere(settings, engine), replicas)


@contextlib.asynccontextmanager
async def connect(settings: Settings, *, long_running: bool = False) -> AsyncIterator[Database]:
    """`open_database`, closed when the block ends: for a command or a test."""
    database = await open_database(settings, long_running=long_running)
    try:
        yield database
    finally:
        await database.close()


def _create_engine(settings: Settings, connector: "_Connector") -> AsyncEngine:
    """The engine for the configured database: asyncpg for PostgreSQL, aiosqlite for SQLite."""
    url = settings.sqlalchemy_url
    if url.get_backend_name() == "sqlite":
        ensure_sqlite_dir(url)
        return configure_sqlite(create_async_engine(url, echo=settings.sql_echo))
    connect_args = _asyncpg_options(settings) | {"async_creator_fn": connector}
    if settings.pgbouncer:
        # PgBouncer's transaction pooling hands each transaction any server
        # connection: no statement prepared under a name may outlive it.
        connect_args |= {"prepared_statement_cache_size": 0, "prepared_statement_name_func": _unique_statement_name}
    engine = create_async_engine(
        url,
        echo=settings.sql_echo,
        pool_size=settings.pool_size,
        max_overflow=0,
        connect_args=connect_args,
        # Each connection is checked as it leaves the pool: one that a restart or failover ended is
        # replaced, and all those older with it, before a statement is sent. It costs 0.3 to 0.6 ms a
        # session here (asyncpg's ping is BEGIN, ";", ROLLBACK, for PgBouncer's sake), beside a search's
        # 5 to 20. https://docs.sqlalchemy.org/en/21/core/pooling.html#pool-disconnects-pessimistic
        pool_pre_ping=True,
    )
    event.listen(engine.sync_engine, "handle_error", _read_only_is_a_disconnect)
    _losses[engine.sync_engine] = losses = _DriverLosses()
    event.listen(engine.sync_engine, "connect", losses.connect)
    event.listen(engine.sync_engine, "checkout", losses.checkout)
    return engine


class _DriverLosses:
    """When a connection of an engine last died under the driver, called directly (a COPY): a pooled
    connection from before then is dropped as it is handed out, and with it every connection the pool
    opened before that checkout.

    For a connection it sees die, SQLAlchemy drops the pool's older ones with it: what ended one (a
    restart, a failover, a pooler's restart) likely ended the others, some perhaps only a moment
    later, after the pool's check. The hot paths' pool does the same (`Database.fetch`).
    """

    def __init__(self) -> None:
        self.lost_at = -math.inf  # time.monotonic()

    def connect(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info[_CONNECTED_AT] = time.monotonic()

    def checkout(
        self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        if record.info[_CONNECTED_AT] < self.lost_at:
            raise InvalidatePoolError("a connection died under the driver, called directly")


_CONNECTED_AT = "songbook_connected_at"
_losses: "weakref.WeakKeyDictionary[sa.Engine, _DriverLosses]" = weakref.WeakKeyDictionary()


def _lost_past_sqlalchemy(exc: BaseException) -> bool:
    """Whether `exc` is a connection that died under the driver, called directly (a COPY), where SQLAlchemy
    did not see it fail: raised as it is, or given SQLAlchemy's shape by the caller (an import's staging)."""
    if isinstance(exc, DBAPIError):
        return not exc.connection_invalidated and lost_connection(exc)
    # Raised as it is: as before, any OSError of the driver's (a timeout included) drops the connection.
    return isinstance(exc, (*LOST_CONNECTION, asyncpg.InternalClientError)) or lost_connection(exc)


async def _drop_connection(session: AsyncSession, exc: BaseException) -> None:
    """Invalidates the connection of a session whose driver, called directly (a COPY), found it dead.

    SQLAlchemy never saw it fail: closing the session would roll back on it,
    fail, and leave it to the garbage collector. If it was lost (not a timeout: a
    server too slow to answer has its other connections still), the pool's others
    from before it are dropped, as SQLAlchemy drops them for a loss it sees (`_DriverLosses`).
    """
    if lost_connection(exc) and (losses := _losses.get(session.get_bind().engine)) is not None:
        losses.lost_at = time.monotonic()
    if session.in_transaction():
        with contextlib.suppress(*DATABASE_ERRORS):
            await (await session.connection()).invalidate()


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """A server that no longer takes writes (a switchover's old primary behind PgBouncer, which a ping
    does not tell): its connection is dropped, and the pool's others with it, as for a lost connection.

    So is one whose protocol asyncpg finds mid-operation (`InternalClientError`: the server closed it
    while it sat idle, its goodbye read first), on a statement or on the pool's ping: SQLAlchemy
    does not know that error, and would otherwise hand the connection out again, or lose track of it.
    """
    original = context.original_exception
    if getattr(original, "sqlstate", None) == READ_ONLY_SQLSTATE or isinstance(
        original.__cause__ if original.__cause__ is not None else original, asyncpg.InternalClientError
    ):
        context.is_disconnect = True


def _asyncpg_options(settings: Settings) -> dict[str, Any]:
    """How songbook's connections to PostgreSQL behave, through SQLAlchemy or not."""
    options: dict[str, Any] = {
        # asyncpg would wait a minute for an unreachable server.
        "timeout": CONNECT_TIMEOUT_SECONDS,
        # If the server goes silent (a network cut), the client stops waiting.
        "command_timeout": settings.statement_timeout_ms / 1000 + COMMAND_TIMEOUT_MARGIN_SECONDS
        if settings.statement_timeout_ms
        else None,
    }
    if settings.pgbouncer:
        # PgBouncer refuses unknown startup parameters: statement_timeout is then
        # the database role's (ALTER ROLE ... SET statement_timeout), and asyncpg
        # prepares no statement under a name of its own.
        return options | {"statement_cache_size": 0}
    # A statement that runs (or waits for a lock) longer is cancelled: a 503, never a hang.
    return options | {"server_settings": {"statement_timeout": str(settings.statement_timeout_ms)}}


def _unique_statement_name() -> str:
    return f"__songbook_{uuid4().hex}__"


# Options of a URL that are SQLAlchemy's asyncpg driver's, not asyncpg's.
SQLALCHEMY_DRIVER_OPTIONS = frozenset(
    {"async_creator_fn", "prepared_statement_cache_size", "prepared_statement_name_func"}
)


async def _create_pool(settings: Settings, engine: AsyncEngine, connector: "_Connector") -> asyncpg.Pool | None:
    """On PostgreSQL, a bare asyncpg pool for the hot paths; None on SQLite.

    It connects as the engine does, with the URL's options (`?ssl=require`)
    read the same way, and on demand: the service starts while the database is down.
    """
    if engine.dialect.name != "postgresql":
        return None
    options = _connect_options(settings, engine)
    return await asyncpg.create_pool(
        min_size=0, max_size=settings.pool_size, reset=_keep_session, connect=connector, **options
    )


def _connect_options(settings: Settings, engine: AsyncEngine) -> dict[str, Any]:
    """What `asyncpg.connect` takes to connect as the engine does."""
    _, connect_args = engine.dialect.create_connect_args(engine.url)
    # asyncpg.connect refuses SQLAlchemy's own options.
    options = {name: value for name, value in connect_args.items() if name not in SQLALCHEMY_DRIVER_OPTIONS}
    return options | _asyncpg_options(settings)


async def _connect_each(*dsn: str | None, pgbouncer: bool = False, **options: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, which goes on to the next of several hosts where asyncpg would stop.

    asyncpg goes on only when a host cannot be reached: one that answers "the
    database system is shutting down" (the old primary of a switchover) ends
    its search. And through PgBouncer, a host takes the connection whether its
    server is up or not, and tells what its server was when PgBouncer first
    reached it (`in_hot_standby`, which asyncpg believes): each is then asked.
    """
    hosts, ports = options.get("host"), options.get("port")
    if not isinstance(hosts, list) or not isinstance(ports, list):
        return await asyncpg.connect(*dsn, **options)
    if not pgbouncer:
        with contextlib.suppress(asyncpg.CannotConnectNowError):
            return await asyncpg.connect(*dsn, **options)
    wanted = options.get("target_session_attrs") or "any"
    for host, port in zip(hosts, ports, strict=True):
        one = options | {"host": host, "port": port, "target_session_attrs": "any"}
        try:
            connection = await asyncpg.connect(*dsn, **one)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            continue
        try:
            standby = await connection.fetchval("SELECT pg_catalog.pg_is_in_recovery()")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            connection.terminate()
            continue
        if (standby and wanted in WRITERS) or (not standby and wanted in ("standby", "read-only")):
            connection.terminate()
            continue
        return connection
    raise asyncpg.TargetServerAttributeNotMatched(f"none of the servers takes a {wanted} connection now")


def _anywhere(settings: Settings, engine: AsyncEngine) -> Anywhere | None:
    """For a URL of several servers whose connections must take writes: reads on any of them, when none does."""
    if engine.dialect.name != "postgresql":
        return None
    _, options = engine.dialect.create_connect_args(engine.url)
    several, attrs = isinstance(options.get("host"), list), options.get("target_session_attrs")
    if not several or attrs not in WRITERS:
        return None
    connect = functools.partial(_connect_each, pgbouncer=settings.pgbouncer)
    connect_args = _asyncpg_options(settings) | {"async_creator_fn": connect}
    if settings.pgbouncer:
        connect_args |= {"prepared_statement_cache_size": 0, "prepared_statement_name_func": _unique_statement_name}
    engine = create_async_engine(
        engine.url.update_query_dict({"target_session_attrs": "any"}), poolclass=NullPool, connect_args=connect_args
    )
    options = {name: value for name, value in options.items() if name not in SQLALCHEMY_DRIVER_OPTIONS}
    options |= _asyncpg_options(settings) | {"target_session_attrs": "any"}
    return Anywhere(engine, functools.partial(connect, **options), asyncio.Semaphore(settings.pool_size))


@dataclass
class _Connector:
    """`asyncpg.connect` for a process's pools, which says plainly when none of several servers takes writes.

    Then (a failover under way: the old primary down, the new one not yet
    promoted) asyncpg raises the error of the last server it tried (a refused
    connection, or that it is not the kind `target_session_attrs` asks for),
    which names neither the others nor why. One log line when that starts,
    one when it ends.
    """

    pgbouncer: bool = False
    down_since: float | None = None

    async def __call__(self, *dsn: str | None, **options: Any) -> asyncpg.Connection:
        began = time.monotonic()
        try:
            connection = await _connect_each(*dsn, pgbouncer=self.pgbouncer, **options)
        except (OSError, asyncpg.TargetServerAttributeNotMatched, asyncpg.CannotConnectNowError) as exc:
            hosts, wanted = options.get("host"), options.get("target_session_attrs")
            if not isinstance(hosts, list) or wanted not in WRITERS or isinstance(exc, TimeoutError):
                raise
            if self.down_since is None:
                self.down_since = time.monotonic()
                logger.warning(
                    "database unavailable: none of %d servers takes writes (last: %s: %s)",
                    len(hosts),
                    type(exc).__name__,
                    exc,
                )
            raise NoWritableDatabase(
                f"None of the {len(hosts)} database servers takes writes now (a failover may be under way);"
                " try again shortly."
            ) from exc
        if self.down_since is not None and began > self.down_since:  # not one begun before it all
            logger.warning(
                "database available: a server takes writes again, after %.1f s", time.monotonic() - self.down_since
            )
            self.down_since = None
        return connection


async def _open_replicas(settings: Settings, engine: AsyncEngine, pool: asyncpg.Pool) -> Replicas:
    """The read replicas of `settings`, each with pools like the primary's, and their poller started."""
    replicas = []
    for url in settings.replica_urls:
        # Connected to as the primary is: the same options, pool size and timeouts.
        replica_settings = settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)})
        connector = _Connector(pgbouncer=replica_settings.pgbouncer)
        replica_engine = _create_engine(replica_settings, connector)
        replica_pool = await _create_pool(replica_settings, replica_engine, connector)
        assert replica_pool is not None
        watch = functools.partial(asyncpg.connect, **_connect_options(replica_settings, replica_engine))
        name = f"{url.host}:{url.port or 5432}"
        replicas.append(Replica(name, replica_pool, _Turns(settings.pool_size), replica_engine, Watch(watch)))
    watch = functools.partial(asyncpg.connect, **_connect_options(settings, engine))
    opened = Replicas(replicas, primary=pool, watch=watch, max_lag_ms=settings.replica_max_lag_ms)
    opened.start()
    return opened


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Nothing to undo on a connection the hot paths give back: single statements and `atomic` blocks.

    They set nothing, listen to nothing, open no cursor and take no advisory lock
    that outlives its transaction, so asyncpg's default reset (`RESET ALL`,
    `UNLISTEN *`, ...) would be a round trip a request for nothing. asyncpg
    still rolls back a transaction left open.
    """


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


async def get_database(request: Request) -> Database:
    """The process's `Database`, made by the lifespan."""
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]
