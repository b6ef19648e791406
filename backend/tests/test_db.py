"""The `Database` on PostgreSQL: the hot paths' pool and its wait, a URL of several servers, cancelled
reads, and connections that died under a COPY."""

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from app import db
from app.config import Settings
from app.errors import NoWritableDatabase
from app.formats import RawRow
from app.importing import Import, OnConflict
from tests.server import free_port
from tests.test_idempotency import wait_for

BACKEND_PID = sa.select(sa.func.pg_backend_pid().label("pid"))


@asynccontextmanager
async def hot_database(settings: Settings, **changes: Any) -> AsyncIterator[db.Database]:
    """A `Database` for `settings` with `changes`, as the service makes it, closed after."""
    if settings.sqlalchemy_url.get_backend_name() != "postgresql":
        pytest.skip("on SQLite the hot paths run on the engine: there is no pool of their own")
    async with db.connect(settings.model_copy(update=changes)) as database:
        yield database


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[db.Database]:
    """A `Database` whose pool holds two connections."""
    async with hot_database(settings, pool_size=2) as database:
        yield database


async def pid(database: db.Database) -> int:
    rows = await database.fetch(BACKEND_PID, {})
    return int(rows[0]["pid"])


async def test_the_urls_options_for_sqlalchemys_driver_leave_the_hot_pool_working(settings: Settings) -> None:
    # What SQLAlchemy documents for PgBouncer: an option of its asyncpg driver, unknown to asyncpg.
    url = settings.sqlalchemy_url.update_query_dict({"prepared_statement_cache_size": "0"})
    async with hot_database(settings, database_url=url.render_as_string(hide_password=False)) as database:
        assert await pid(database) > 0


def several_hosts(settings: Settings, *ports: int, own: bool = True) -> str:
    """A URL of servers at `ports` of the database's host, then (if `own`) its own, as libpq writes it."""
    url = settings.sqlalchemy_url
    hosts = ",".join(f"{url.host}:{port}" for port in (*ports, *([url.port or 5432] if own else [])))
    return f"postgresql://{url.username}@{hosts}/{url.database}?target_session_attrs=read-write"


async def test_a_url_of_several_hosts_reaches_the_one_that_answers_on_both_pools(settings: Settings) -> None:
    async with hot_database(settings, database_url=several_hosts(settings, free_port())) as database:
        on_the_hot_pool = await pid(database)
        on_the_engine = await database.read(lambda transaction: transaction.fetch(BACKEND_PID))

    assert on_the_hot_pool > 0
    assert on_the_engine[0]["pid"] > 0


async def test_no_host_that_takes_writes_is_said_plainly(settings: Settings) -> None:
    url = several_hosts(settings, free_port(), free_port(), own=False)
    async with hot_database(settings, database_url=url) as database:
        with pytest.raises(NoWritableDatabase, match="None of the 2 database servers takes writes now"):
            await database.fetch(BACKEND_PID, {}, write=True)


async def test_a_read_cancelled_on_the_session_path_leaves_no_connection_mid_operation(
    database: db.Database,
) -> None:
    sleep = sa.select(sa.func.pg_sleep(5))
    for _ in range(3):  # more than the pool holds
        task = asyncio.create_task(database.read(lambda transaction: transaction.fetch(sleep)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async with asyncio.timeout(5):
        rows = await database.read(lambda transaction: transaction.fetch(BACKEND_PID))
    assert rows[0]["pid"] > 0


async def test_a_read_waits_for_a_turn_at_most_the_pools_bound(
    database: db.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "POOL_TIMEOUT_SECONDS", 0.5)
    sleep = sa.text("SELECT pg_sleep(3)")
    holding = [asyncio.create_task(database.fetch(sleep, {})) for _ in range(2)]  # every turn of the pool
    await asyncio.sleep(0.3)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await database.fetch(BACKEND_PID, {})
    assert 0.4 < loop.time() - started < 2

    await asyncio.gather(*holding)
    assert await pid(database) > 0  # the turns free again, reads are answered


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
async def test_a_batch_whose_connection_died_before_its_copy_gives_the_connection_back(
    database: db.Database, settings: Settings, keyed: bool
) -> None:
    """A batch's rows go in by COPY on the driver, past SQLAlchemy: a connection that died under it is
    dropped and given back to the pool, not rolled back on and left to the garbage collector. A keyed
    batch runs in an atomic block on a session (`Database.atomic`), a plain one in a transaction."""
    await batch_that_dies(database, settings, keyed=keyed)
    gc.collect()  # a connection left to it would be a warning, an error in these tests

    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await pid(database) > 0


async def test_a_connection_that_died_under_the_driver_retires_the_pools_others(
    database: db.Database, settings: Settings
) -> None:
    """What ended one connection (a restart, a failover) likely ended the pool's others, some perhaps a
    moment after the pool's check of them: once a COPY's connection died, the pool hands out new ones,
    as it does after a loss SQLAlchemy sees itself."""
    pooled = await session_pids(database)
    await batch_that_dies(database, settings, keyed=False)

    assert not await session_pids(database) & pooled


async def test_a_connection_dropped_for_a_timeout_leaves_the_pools_others(database: db.Database) -> None:
    """A server too slow to answer still has its other connections: only the one dropped is replaced."""
    pooled = await session_pids(database)
    async with database.transaction() as transaction:
        dropped = await session_pid(transaction)
        await db._drop_connection(transaction.session, TimeoutError())

    assert await session_pids(database) & pooled == pooled - {dropped}


async def session_pids(database: db.Database) -> set[int]:
    """The backends of the pool's two connections, both held at once."""
    async with database.transaction() as first, database.transaction() as second:
        return {await session_pid(first), await session_pid(second)}


async def batch_that_dies(database: db.Database, settings: Settings, *, keyed: bool) -> None:
    """A batch whose backend is ended between its start and its COPY: it fails."""
    with pytest.raises(OperationalError):  # noqa: PT012 (the block is the batch)
        async with (
            database.atomic(lock=1, on_session=True) if keyed else contextlib.nullcontext(),
            database.transaction(write=True) as transaction,
        ):
            connection = await transaction.connection()
            backend = (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
            job = Import(connection, OnConflict.SKIP)
            await job.start()
            await ended(settings, backend)
            await job.stage("body", [RawRow(0, {"name": "Song", "artist": "Artist"})])


async def session_pid(transaction: db.Transaction) -> int:
    rows = await transaction.fetch(BACKEND_PID)
    return int(rows[0]["pid"])


async def ended(settings: Settings, backend: int) -> None:
    """Ends the server's `backend`, as a restart would, from another connection, and waits until it is gone."""
    async with db.connect(settings) as other:
        await other.fetch(sa.text(f"SELECT pg_terminate_backend({int(backend)})"), {})

        async def gone() -> bool:
            return not await other.fetch(sa.text(f"SELECT FROM pg_stat_activity WHERE pid = {int(backend)}"), {})

        await wait_for(gone, "the backend gone")
