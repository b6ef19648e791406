"""Reads on a real streaming replica (`pg_basebackup -R` of a primary of the module's own): which reads go
there, how stale they may be, read-your-writes with the token, and a replica behind or down left out."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app import db
from app.config import Settings, load_settings
from app.errors import SettingsError
from app.main import create_app
from app.replicas import COOKIE, HEADER, Replicas, format_lsn, parse_lsn
from tests.catalog import empty_catalog
from tests.conftest import client_for
from tests.pgcluster import Replicated
from tests.test_pages import browser, signed_in, token

DEADLINE_SECONDS = 20.0  # generous: the machine is shared and loaded


@pytest.fixture
def pair(replicated: Replicated) -> Replicated:
    """The module's primary and replica, the replica running and replaying."""
    replicated.start_replica()
    return replicated


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not so within {DEADLINE_SECONDS} s: {what}"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def replicated_app(pair: Replicated, *, max_lag_ms: int) -> AsyncIterator[FastAPI]:
    """The app over the primary and its replica, the catalog empty and the replica caught up with it."""
    settings = Settings(
        database_url=pair.primary.url,
        read_replica_urls=pair.replica.url,
        replica_max_lag_ms=max_lag_ms,
        rate_limit_per_second=0,
        anonymous_rate_limit_per_second=0,
        require_write_key=False,
        access_log=False,
    )
    application = create_app(settings)
    async with LifespanManager(application):
        database = application.state.database
        await empty_catalog(database.engine)
        replicas: Replicas = database.replicas
        emptied = await replicas.written_lsn()
        assert emptied is not None
        await until(lambda: caught_up(replicas, emptied) and bool(replicas.usable()), "the replica caught up")
        yield application


@asynccontextmanager
async def service(pair: Replicated, *, max_lag_ms: int) -> AsyncIterator[tuple[httpx.AsyncClient, Replicas]]:
    """A client (with no key, writes need none) of `replicated_app`, and its replicas."""
    async with replicated_app(pair, max_lag_ms=max_lag_ms) as application, client_for(application, None) as client:
        yield client, application.state.database.replicas


def caught_up(replicas: Replicas, lsn: int) -> bool:
    return all(replica.replayed >= lsn for replica in replicas.replicas)


def token_of(response: httpx.Response) -> int:
    lsn = parse_lsn(response.headers[HEADER].encode())
    assert lsn is not None
    return lsn


@asynccontextmanager
async def replay_paused(pair: Replicated) -> AsyncIterator[None]:
    """The replica stops applying the primary's WAL (it keeps receiving it), and applies it again after."""
    connection = await asyncpg.connect(pair.replica.url)
    try:
        await connection.execute("SELECT pg_wal_replay_pause()")
        yield
    finally:
        await connection.execute("SELECT pg_wal_replay_resume()")
        await connection.close()


async def create(client: httpx.AsyncClient, name: str) -> httpx.Response:
    """Creates a song, as a program does that keeps no cookie (the read-after token's cookie is dropped)."""
    response = await client.post("/songs", json={"name": name, "artist": "The Band"})
    assert response.status_code == 201, response.text
    client.cookies.clear()
    return response


def names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [song["name"] for song in response.json()]


async def test_reads_go_to_the_replica_and_writes_if_match_and_tokens_to_the_primary(pair: Replicated) -> None:
    async with service(pair, max_lag_ms=60_000) as (client, replicas):
        first = await create(client, "First")
        await until(lambda: caught_up(replicas, token_of(first)), "the replica has the first song")
        async with replay_paused(pair):
            second = await create(client, "Second")
            song = f"/songs/{second.json()['id']}"

            # The replica has not replayed the second song: every read without a token shows that.
            assert (await client.get(song)).status_code == 404
            assert names(await client.get("/songs")) == ["First"]
            assert names(await client.get("/songs", params={"q": "second"})) == []
            assert (await client.get("/artists")).json() == [{"name": "The Band", "songs": 1}]
            export = await client.get("/songs", headers={"Accept": "application/x-ndjson"})
            assert [line.count('"First"') for line in export.text.splitlines()] == [1]

            # The write's token, If-Match and writes go to the primary, which has it.
            with_token = await client.get(song, headers={HEADER: second.headers[HEADER]})
            assert with_token.json() == second.json()
            assert (await client.get(song, headers={"If-Match": "*"})).status_code == 200
            changed = await client.patch(song, json={"year": 1999}, headers={"If-Match": '"1"'})
            client.cookies.clear()
            assert changed.json()["year"] == 1999
            assert token_of(changed) > token_of(second)
            assert names(await client.get("/songs", headers={HEADER: changed.headers[HEADER]})) == ["First", "Second"]
            # A token that is not one of ours asks for fresh data too.
            assert (await client.get(song, headers={HEADER: "not an LSN"})).status_code == 200


async def test_every_write_answers_a_token_and_no_read_does(pair: Replicated) -> None:
    async with service(pair, max_lag_ms=60_000) as (client, _):
        created = await create(client, "One")
        batch = await client.post("/songs/batch", json=[{"name": "Two", "artist": "The Band"}])
        three = {"name": "Three", "artist": "The Band"}
        keyed = await client.post("/songs", json=three, headers={"Idempotency-Key": "k"})
        deleted = await client.delete(created.headers["Location"])
        read = await client.get("/songs")
        scrape = await client.get("/metrics")

    answers = (created, batch, keyed, deleted, read)
    assert [HEADER in answer.headers for answer in answers] == [True, True, True, True, False]
    assert token_of(created) < token_of(batch) < token_of(keyed) < token_of(deleted)
    assert f'songbook_replica_usable{{replica="127.0.0.1:{pair.replica.port}"}} 1.0' in scrape.text


async def test_a_browser_reads_its_own_write_by_the_cookie(pair: Replicated) -> None:
    """A form's POST, then the GET of the page it redirects to: no header, but the cookie, for the bound."""
    async with service(pair, max_lag_ms=60_000) as (client, replicas):
        first = await create(client, "First")
        await until(lambda: caught_up(replicas, token_of(first)), "the replica has the first song")
        async with replay_paused(pair):
            created = await client.post("/songs", json={"name": "Second", "artist": "The Band"})
            by_cookie = await client.get(created.headers["Location"])
            client.cookies.clear()
            without = await client.get(created.headers["Location"])

    assert created.headers["set-cookie"] == (
        f"{COOKIE}={created.headers[HEADER]}; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"
    )
    assert (by_cookie.status_code, without.status_code) == (200, 404)


async def test_a_person_sees_on_the_page_the_song_they_just_added(pair: Replicated) -> None:
    async with replicated_app(pair, max_lag_ms=60_000) as application, browser(application) as person:
        await signed_in(application, person)
        async with replay_paused(pair):
            form = {"token": await token(person, "/"), "name": "Added", "artist": "The Band"}
            added = await person.post("/ui/songs/new", data=form, follow_redirects=True)
            person.cookies.delete(COOKIE)
            again = await person.get(str(added.url))

    assert added.status_code == 200
    assert "Added" in added.text
    assert again.status_code == 404  # the replica's answer, without the cookie


async def test_a_client_reads_its_own_write_at_once_every_time(pair: Replicated) -> None:
    """The replica applies each commit 300 ms late: a read with the write's token sees it every
    time; one without it may not, and then only within the bound."""
    max_lag = 5.0
    delayed = await asyncpg.connect(pair.replica.url)
    await delayed.execute("ALTER SYSTEM SET recovery_min_apply_delay = '300ms'")
    await delayed.execute("SELECT pg_reload_conf()")
    try:
        async with service(pair, max_lag_ms=int(max_lag * 1000)) as (client, replicas):
            stale = 0
            for number in range(200):
                created = await create(client, f"Song {number}")
                written = time.monotonic()
                mine = await client.get(created.headers["Location"], headers={HEADER: created.headers[HEADER]})
                assert (mine.status_code, mine.json()) == (200, created.json()), number
                asked = time.monotonic()
                anyones = await client.get(created.headers["Location"])
                if anyones.status_code == 404:
                    stale += 1
                    assert asked < written + max_lag, "a read staler than the bound"
                else:
                    assert anyones.json() == created.json()
            assert stale > 0, "no read went to the replica"
            assert replicas.usable(), "the replica was left out"
    finally:
        await delayed.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        await delayed.execute("SELECT pg_reload_conf()")
        await delayed.close()


async def test_a_replica_behind_by_more_than_the_bound_is_left_out_until_it_catches_up(pair: Replicated) -> None:
    max_lag = 0.5
    async with service(pair, max_lag_ms=int(max_lag * 1000)) as (client, replicas):
        async with replay_paused(pair):
            created = await create(client, "Late")
            written = time.monotonic()
            while True:  # stale reads while the replica is within the bound, then the primary's
                asked = time.monotonic()
                read = await client.get(created.headers["Location"])
                if read.status_code == 200:
                    break
                assert read.status_code == 404
                assert asked < written + max_lag, "a read staler than the bound"
                await asyncio.sleep(0.01)
            assert replicas.usable() == []
            assert names(await client.get("/songs", params={"q": "late"})) == ["Late"]
        await until(lambda: bool(replicas.usable()), "the replica is used again once it caught up")
        # Used again: a song it has not replayed yet is missing from a read without the token. A few
        # tries, in case this loaded machine takes longer than the bound between the write and the read.
        for attempt in range(5):
            async with replay_paused(pair):
                created = await create(client, f"Later {attempt}")
                if (await client.get(created.headers["Location"])).status_code == 404:
                    break
            await until(lambda: bool(replicas.usable()), "the replica is used again")
        else:
            pytest.fail("no read went to the replica after it caught up")


async def test_a_replica_that_is_down_is_left_out_and_reads_still_succeed(pair: Replicated) -> None:
    async with service(pair, max_lag_ms=1000) as (client, replicas):
        last = None
        for number in range(20):
            last = await create(client, f"Song {number}")
        assert last is not None
        await until(lambda: caught_up(replicas, token_of(last)), "the replica has every song")
        statuses: list[int] = []
        stop = asyncio.Event()

        async def read(worker: int) -> None:
            number = 0
            while not stop.is_set():
                number += 1
                path = f"/songs/{1 + (worker + number) % 20}" if number % 2 else "/songs?limit=5"
                statuses.append((await client.get(path)).status_code)

        readers = [asyncio.create_task(read(worker)) for worker in range(4)]
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(pair.replica.ctl, "-m", "immediate", "stop")
            await until(lambda: replicas.usable() == [], "the replica is left out")
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*readers)
        assert set(statuses) == {200}, "a read failed while the replica went down"
        # The reads that go through a session, once it is known down: from the primary.
        assert len(names(await client.get("/songs", params={"q": "song"}))) == 20
        assert (await client.get("/artists")).json() == [{"name": "The Band", "songs": 20}]
        await asyncio.to_thread(pair.start_replica)
        await until(lambda: bool(replicas.usable()), "the replica is used again once it is back")


async def test_a_replica_read_that_waited_too_long_for_a_turn_leaves_the_replica_in(
    pair: Replicated, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "POOL_TIMEOUT_SECONDS", 0.2)
    async with replicated_app(pair, max_lag_ms=60_000) as application, client_for(application, None) as client:
        song = await create(client, "Halo")
        replicas: Replicas = application.state.database.replicas
        [replica] = replicas.replicas
        await until(lambda: caught_up(replicas, token_of(song)), "the replica has the song")
        fresh_as_of = replica.fresh_as_of
        # Every turn of the replica's taken: a read waits, and gives up, as under a burst of reads.
        held = 0
        while not replica.turns.locked():
            await replica.turns.acquire()
            held += 1
        try:
            read = await client.get(f"/songs/{song.json()['id']}")
        finally:
            for _ in range(held):
                replica.turns.release()

        assert read.status_code == 200  # the primary answered it
        # Not a lost connection: the replica is not left out, and its pool is kept.
        assert replica.fresh_as_of >= fresh_as_of
        assert replica in replicas.usable()


def test_replicas_are_refused_with_sqlite() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(database_url="", read_replica_urls="postgresql://reader:secret@replica:5432/songbook")

    assert "SONGBOOK_READ_REPLICA_URLS" in str(refused.value)
    assert "SQLite" in str(refused.value)
    assert "secret" not in str(refused.value)


def test_a_replica_must_be_a_postgresql_url() -> None:
    with pytest.raises(SettingsError, match="PostgreSQL URL"):
        load_settings(database_url="postgresql://db/songbook", read_replica_urls="sqlite:///replica.db")


@pytest.mark.parametrize("lsn", [0, 0x16_B374D848, 2**64 - 1])
def test_a_token_is_an_lsn_as_postgresql_writes_it(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn).encode()) == lsn
    assert format_lsn(0x16_B374D848) == "16/B374D848"


def test_settings_without_replicas_have_none() -> None:
    assert Settings(database_url="postgresql://db/songbook").replica_urls == []
