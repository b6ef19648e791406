"""A keyed create whose server is killed at any moment: the retry writes the song once, or replays its answer."""

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import Settings
from app.db import configure_sqlite
from tests.catalog import new_key, rows
from tests.server import serving

SONG = {"name": "Halo", "artist": "Beyoncé", "year": 2008}
CPU_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The user and system time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CPU_TICKS_PER_SECOND


def write_key(url: URL) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {new_key(Settings(database_url=url.render_as_string(hide_password=False)), 'write')}"
    }


async def scalar(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as connection:
        return int((await connection.exec_driver_sql(sql)).scalar_one())


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 30
    while not await condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        await asyncio.sleep(0.05)


HELD = 1515  # the test's advisory lock


@asynccontextmanager
async def song_held(engine: AsyncEngine) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """A create of `SONG` is held up once its song is written, until the block ends; yields a wait for a server
    to be held up there.

    A trigger after the song's insert holds it up: the song is written, its
    transaction not committed (and, but in a foreseen create's one statement,
    its answer not yet kept). On PostgreSQL it waits for an advisory lock the test holds; on
    SQLite it counts eight billion rows, and a server that has spent 0.3 s of CPU
    on one create (a hundred times what one costs) is in it. Neither needs
    anything of the service but its own statements.
    """
    if engine.dialect.name == "postgresql":
        async with engine.begin() as connection:
            await connection.exec_driver_sql(
                "CREATE FUNCTION hold_song() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_advisory_xact_lock({HELD}); RETURN NEW; END $$"
            )
            await connection.exec_driver_sql(
                "CREATE TRIGGER hold_song AFTER INSERT ON song FOR EACH ROW "
                f"WHEN (NEW.name = '{SONG['name']}') EXECUTE FUNCTION hold_song()"
            )
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        )
        # The killed server's transaction ends when its statement, let through, finds the client gone.
        locks = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )

        async def keeping() -> bool:
            return await scalar(engine, waiting) > 0

        async def ended() -> bool:
            return await scalar(engine, locks) == 0

        async def held(pid: int) -> None:
            await wait_for(keeping, "the song's insert waiting for the test's lock")

        try:
            async with engine.connect() as holder:
                await holder.exec_driver_sql(f"SELECT pg_advisory_lock({HELD})")
                await holder.commit()  # the lock is the session's: it outlives the transaction
                yield held
                await holder.exec_driver_sql(f"SELECT pg_advisory_unlock({HELD})")
            await wait_for(ended, "the killed server's transaction end")
        finally:
            async with engine.begin() as connection:
                await connection.exec_driver_sql("DROP TRIGGER hold_song ON song")
                await connection.exec_driver_sql("DROP FUNCTION hold_song()")
        return
    async with engine.begin() as connection:
        await connection.exec_driver_sql("CREATE TABLE slow (x INTEGER)")
        await connection.exec_driver_sql(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000) "
            "INSERT INTO slow SELECT x FROM n"
        )
        await connection.exec_driver_sql(
            f"CREATE TRIGGER slow_song AFTER INSERT ON song WHEN NEW.name = '{SONG['name']}' "
            "BEGIN SELECT count(*) FROM slow a, slow b, slow c; END"
        )

    async def busy(pid: int) -> None:
        start = cpu_seconds(pid)

        async def counting() -> bool:
            return cpu_seconds(pid) - start > 0.3

        await wait_for(counting, "the server counting in the song's trigger")

    try:
        yield busy
    finally:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("DROP TRIGGER slow_song")
            await connection.exec_driver_sql("DROP TABLE slow")


@asynccontextmanager
async def engine_of(url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url)
    if url.get_backend_name() == "sqlite":
        configure_sqlite(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


def songs_named(url: URL, name: str) -> int:
    return sum(1 for _, song_name, _, _ in rows(url) if song_name == name)


def song_id(url: URL, name: str) -> int:
    return next(id_ for id_, song_name, _, _ in rows(url) if song_name == name)


# Where a keyed write is sent, and the body that writes SONG there.
ROUTES = {"create": ("/songs", SONG), "batch": ("/songs/batch", [SONG])}


@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_server_killed_before_or_after_the_answer_leaves_none_or_all_of_the_write(
    catalog: URL, tmp_path: Path, route: str
) -> None:
    path, body = ROUTES[route]
    write = await asyncio.to_thread(write_key, catalog)
    before, after = write | {"Idempotency-Key": "killed-before"}, write | {"Idempotency-Key": "killed-after"}
    creep = {"name": "Creep", "artist": "Radiohead"}
    with serving(tmp_path, {}) as server:
        answered = await asyncio.to_thread(httpx.post, f"{server.base}/songs", json=creep, headers=after)
        os.kill(server.pid, signal.SIGKILL)

    async with engine_of(catalog) as engine:
        async with song_held(engine) as held:
            with serving(tmp_path, {}) as server:
                async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
                    replayed = await http.post("/songs", json=creep, headers=after)
                    first = asyncio.create_task(http.post(path, json=body, headers=before))
                    await held(server.pid)
                    os.kill(server.pid, signal.SIGKILL)
                    with pytest.raises(httpx.TransportError):
                        await first
        written = await asyncio.to_thread(songs_named, catalog, "Halo")

    with serving(tmp_path, {}) as server:
        retry = await asyncio.to_thread(httpx.post, f"{server.base}{path}", json=body, headers=before)

    assert answered.status_code == 201
    assert replayed.status_code == 201  # killed after the commit: the retry gets the first answer
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == answered.json()
    assert retry.status_code == (201 if route == "create" else 200)
    if route == "create" and catalog.get_backend_name() == "postgresql":
        # A create is one statement there (its id set aside, its answer known before it writes):
        # the server had it all, song and answer, and finished it after its client died.
        assert written == 1
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["id"] == await asyncio.to_thread(song_id, catalog, "Halo")
    else:
        assert written == 0  # killed between the write and its answer: nothing was kept
        assert "idempotent-replayed" not in retry.headers  # and the retry writes the song, once
    assert await asyncio.to_thread(songs_named, catalog, "Halo") == 1
    assert await asyncio.to_thread(songs_named, catalog, "Creep") == 1
