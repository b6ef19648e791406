"""The hot paths' pool on PostgreSQL: one connection for statements in a row."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from app import db
from app.config import Settings

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


async def test_statements_in_a_bound_block_share_one_connection(database: db.Database) -> None:
    async with database.bound():
        pairs = [await ours_and_another_tasks(database) for _ in range(3)]

    ours, others = {pair[0] for pair in pairs}, {pair[1] for pair in pairs}
    assert len(ours) == 1  # the block's connection throughout
    assert ours.isdisjoint(others)  # and nobody else's meanwhile


async def ours_and_another_tasks(database: db.Database) -> tuple[int, int]:
    """The backends of a statement of this task and, meanwhile, of a task started here."""
    other = asyncio.create_task(pid(database))
    return await pid(database), await other


def in_use(database: db.Database) -> int:
    assert database.pool is not None
    return int(database.pool.get_size() - database.pool.get_idle_size())


async def test_a_bound_block_gives_its_connection_back_while_a_transaction_of_it_runs(database: db.Database) -> None:
    async with database.bound():
        await pid(database)
        held = in_use(database)
        async with database.transaction():
            during = in_use(database)
        await pid(database)
        again = in_use(database)
    after = in_use(database)

    assert (held, during, again, after) == (1, 0, 1, 0)


async def test_the_urls_options_for_sqlalchemys_driver_leave_the_hot_pool_working(settings: Settings) -> None:
    # What SQLAlchemy documents for PgBouncer: an option of its asyncpg driver, unknown to asyncpg.
    url = settings.sqlalchemy_url.update_query_dict({"prepared_statement_cache_size": "0"})
    async with hot_database(settings, database_url=url.render_as_string(hide_password=False)) as database:
        assert await pid(database) > 0
