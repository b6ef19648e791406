"""Idempotency-Key: a retried write gets the first answer and writes nothing more."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import delete, insert, update
from sqlmodel import col

from app import idempotency, keys, songs
from app.checking import Rejected
from app.config import Settings
from app.db import WRITE_OPTIONS, Database
from app.errors import ImportAborted
from app.fields import utcnow
from app.folding import derived_columns
from app.formats import RawRow
from app.main import create_app
from app.models import ApiKey, ApiKeyCreate, IdempotencyRecord, Song
from tests.conftest import client_for, make_key
from tests.test_metrics import scrape, value

SONG = {"name": "Halo", "artist": "Beyoncé", "year": 2008}
SONG_2 = {"name": "Creep", "artist": "Radiohead"}


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def count_songs(client: httpx.AsyncClient) -> int:
    return len((await client.get("/songs")).json())


async def test_a_retry_replays_the_first_answer(client: httpx.AsyncClient) -> None:
    first = await client.post("/songs", json=SONG, headers=key("a1"))
    retry = await client.post("/songs", json=dict(reversed(SONG.items())), headers=key("a1"))

    assert first.status_code == 201
    assert retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["location"] == first.headers["location"]
    assert retry.headers["etag"] == first.headers["etag"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await count_songs(client) == 1


async def test_the_same_key_for_another_request_is_422(client: httpx.AsyncClient) -> None:
    await client.post("/songs", json=SONG, headers=key("a1"))

    other = await client.post("/songs", json=SONG | {"year": 2009}, headers=key("a1"))

    assert other.status_code == 422
    assert other.json()["code"] == "idempotency-key-reused"
    assert await count_songs(client) == 1


async def test_an_error_answer_is_replayed_too(client: httpx.AsyncClient) -> None:
    await client.post("/songs", json=SONG)

    first = await client.post("/songs", json=SONG, headers=key("dup"))
    retry = await client.post("/songs", json=SONG, headers=key("dup"))

    assert first.status_code == 409
    assert retry.status_code == 409
    # The same problem, naming the request that answers it: the retry.
    assert retry.json() | {"request_id": first.headers["X-Request-ID"]} == first.json()
    assert retry.json()["request_id"] == retry.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    assert retry.headers["content-type"] == "application/problem+json"


async def test_a_keyed_create_whose_set_aside_id_an_import_took_gets_another(
    client: httpx.AsyncClient, db: Database
) -> None:
    first = await client.post("/songs", json=SONG, headers=key("first"))
    # An export's row brings the id the next keyed create would have had (PostgreSQL sets ids aside).
    taken = first.json()["id"] + 1
    await songs.import_songs(db=db, sources=[("export", [RawRow(2, {"id": taken, "name": "Taken", "artist": "X"})])])

    second = await client.post("/songs", json={"name": "Second", "artist": "Y"}, headers=key("second"))
    retry = await client.post("/songs", json={"name": "Second", "artist": "Y"}, headers=key("second"))

    assert second.status_code == 201
    assert second.json()["id"] not in (first.json()["id"], taken)
    assert (await client.get(f"/songs/{taken}")).json()["name"] == "Taken"
    assert retry.json() == second.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert await count_songs(client) == 3


async def test_songs_created_further_apart_than_a_set_aside_block_lasts_have_ids_in_creation_order(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(songs, "SET_ASIDE_SECONDS", 0.0)  # every keyed create older than its block

    keyed = await client.post("/songs", json=SONG, headers=key("first"))
    plain = await client.post("/songs", json={"name": "Plain", "artist": "X"})
    keyed_again = await client.post("/songs", json={"name": "Keyed", "artist": "Y"}, headers=key("second"))

    # Without the bound, the second keyed create took the next id of the first's block, below the plain one's.
    assert keyed.json()["id"] < plain.json()["id"] < keyed_again.json()["id"]


async def test_keyed_creates_at_once_share_a_set_aside_block(client: httpx.AsyncClient) -> None:
    created = await asyncio.gather(
        *(client.post("/songs", json={"name": f"Song {n}", "artist": "X"}, headers=key(f"k{n}")) for n in range(64))
    )

    ids = sorted(answer.json()["id"] for answer in created)
    # Those that found the block used up waited for one to take the next: before, each took a block of its
    # own, and the 64 ids lay hundreds apart.
    assert [answer.status_code for answer in created] == [201] * 64
    assert ids[-1] - ids[0] < 64 + songs.ID_BLOCK


async def test_an_import_whose_id_a_song_written_meanwhile_took_writes_nothing_and_says_so(
    client: httpx.AsyncClient, db: Database
) -> None:
    if db.dialect != "postgresql":
        pytest.skip("SQLite's import holds the write lock from its start: no song is written meanwhile")
    taken = (await client.post("/songs", json=SONG)).json()["id"] + 100
    brought = [("export", [RawRow(2, {"id": taken, "name": "Brought", "artist": "X"})])]
    # As a keyed create writes an id it set aside: the row is not there when the import looks.
    async with db.engine.connect() as meanwhile:
        await meanwhile.begin()
        await meanwhile.execute(insert(Song).values({"id": taken} | SONG_2 | derived_columns(SONG_2)))
        importing = asyncio.create_task(songs.import_songs(db=db, sources=brought))
        await wait_for(lambda: inserts_waiting(db), "the import waiting for the song written meanwhile")
        await meanwhile.commit()
    with pytest.raises(ImportAborted, match="run the import again"):
        await importing
    rejected: list[Rejected] = []
    again = await songs.import_songs(db=db, sources=brought, rejected=rejected.append)

    assert (await client.get(f"/songs/{taken}")).json()["name"] == SONG_2["name"]
    assert [row.reason for row in rejected] == [f"id {taken} is another song's"]
    assert (again.inserted, again.rejected) == (0, 1)
    assert await count_songs(client) == 2


async def test_keys_belong_to_their_api_key(app: FastAPI, client: httpx.AsyncClient) -> None:
    async with client_for(app, await make_key(app, "write")) as other:
        mine = await client.post("/songs", json=SONG, headers=key("same"))
        theirs = await other.post("/songs", json={"name": "Creep", "artist": "Radiohead"}, headers=key("same"))

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert await count_songs(client) == 2


async def test_writes_let_through_without_an_api_key_are_idempotent_too(
    app: FastAPI, anonymous: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    app.state.settings.require_write_key = False

    first = await anonymous.post("/songs", json=SONG, headers=key("k1"))
    retry = await anonymous.post("/songs", json=SONG, headers=key("k1"))
    batch = [await anonymous.post("/songs/batch", json=[SONG_2], headers=key("k2")) for _ in range(2)]
    malformed = await anonymous.post("/songs", json=SONG_2, headers=key("a key with spaces"))
    keyed = await client.post("/songs", json=SONG, headers=key("k1"))  # another set of keys: an API key's

    assert first.status_code == 201
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    assert [answer.json() for answer in batch] == [batch[0].json()] * 2
    assert batch[1].headers["idempotent-replayed"] == "true"
    assert malformed.status_code == 422
    assert keyed.status_code == 409  # the song is there: not a replay of the keyless answer
    assert "idempotent-replayed" not in keyed.headers
    assert await count_songs(client) == 2


async def test_a_new_key_has_no_answers_of_a_deleted_key_whose_id_it_took(app: FastAPI) -> None:
    """Keys are revoked, not deleted; one deleted by hand leaves its answers, and SQLite gives its id to
    the next key made: they are not that key's."""
    database: Database = app.state.database
    gone = await keys.create_key(db=database, key_in=ApiKeyCreate(name="gone", scope="write"))
    async with client_for(app, gone.key) as client:
        assert (await client.post("/songs", json=SONG, headers=key("same"))).status_code == 201
    async with database.transaction(write=True) as transaction:
        await transaction.fetch(delete(ApiKey).where(col(ApiKey.id) == gone.id))

    new = await keys.create_key(db=database, key_in=ApiKeyCreate(name="new", scope="write"))
    async with client_for(app, new.key) as client:
        answer = await client.post("/songs", json=SONG_2, headers=key("same"))

    assert new.id == gone.id or database.dialect == "postgresql"  # PostgreSQL never gives an id twice
    assert answer.status_code == 201
    assert "idempotent-replayed" not in answer.headers


async def test_simultaneous_requests_with_one_key_create_one_song(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(*(client.post("/songs", json=SONG, headers=key("race")) for _ in range(10)))

    created = [response for response in responses if response.status_code == 201]
    in_use = [response for response in responses if response.status_code == 409]
    assert created
    assert len(created) + len(in_use) == 10
    assert {response.json()["id"] for response in created} == {created[0].json()["id"]}
    assert all(response.json()["code"] == "idempotency-key-in-use" for response in in_use)
    assert all(response.headers["retry-after"] == "1" for response in in_use)
    assert await count_songs(client) == 1


async def test_simultaneous_retries_of_an_answered_request_all_replay(client: httpx.AsyncClient) -> None:
    first = await client.post("/songs", json=SONG, headers=key("done"))

    retries = await asyncio.gather(*(client.post("/songs", json=SONG, headers=key("done")) for _ in range(10)))

    assert [(retry.status_code, retry.headers["idempotent-replayed"]) for retry in retries] == [(201, "true")] * 10
    assert {retry.json()["id"] for retry in retries} == {first.json()["id"]}


async def test_the_batch_route_is_idempotent(client: httpx.AsyncClient) -> None:
    batch = [SONG, {"name": "Creep", "artist": "Radiohead"}]

    first = await client.post("/songs/batch", json=batch, headers=key("b1"))
    retry = await client.post("/songs/batch", json=batch, headers=key("b1"))
    # The rule it had by default, named; a parameter the route does not read: the same request.
    named = await client.post("/songs/batch?on_conflict=skip&utm=x", json=batch, headers=key("b1"))
    other_rule = await client.post("/songs/batch?on_conflict=update", json=batch, headers=key("b1"))

    assert first.json()["created"] == 2
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert (named.status_code, named.headers["idempotent-replayed"]) == (200, "true")
    assert other_rule.status_code == 422


@pytest.mark.parametrize("value", [b"", b"x" * 256, "naïve".encode(), b"two words"])
async def test_a_malformed_idempotency_key_is_422(client: httpx.AsyncClient, value: bytes) -> None:
    response = await client.post("/songs", json=SONG, headers={b"Idempotency-Key": value})

    assert response.status_code == 422
    assert await count_songs(client) == 0


async def test_an_expired_answer_is_not_replayed(app: FastAPI, client: httpx.AsyncClient) -> None:
    await client.post("/songs", json=SONG, headers=key("old"))
    await set_records(app, expires_at=utcnow() - timedelta(seconds=1))

    retry = await client.post("/songs", json=SONG, headers=key("old"))

    assert retry.status_code == 409  # done again: the song is there already
    assert "idempotent-replayed" not in retry.headers


async def test_a_claim_whose_request_died_is_taken_over(app: FastAPI, client: httpx.AsyncClient) -> None:
    await client.post("/songs", json={"name": "Creep", "artist": "Radiohead"}, headers=key("died"))
    await client.delete("/songs/1")
    await set_records(app, status=None, claimed_at=utcnow() - timedelta(minutes=3))

    retry = await client.post("/songs", json={"name": "Creep", "artist": "Radiohead"}, headers=key("died"))

    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers


async def set_records(app: FastAPI, **values: object) -> None:
    async with app.state.database.transaction(write=True) as transaction:
        await transaction.fetch(update(IdempotencyRecord).values(**values))


async def test_answers_are_seen_by_every_instance(app: FastAPI, client: httpx.AsyncClient, settings: Settings) -> None:
    first = await client.post("/songs", json=SONG, headers=key("shared"))
    other_instance = create_app(settings)
    async with LifespanManager(other_instance):
        transport = httpx.ASGITransport(app=other_instance)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://songbook.test",
            headers={"Authorization": client.headers["authorization"]},
        ) as other:
            retry = await other.post("/songs", json=SONG, headers=key("shared"))

    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"


async def test_a_write_whose_connection_dies_frees_its_key_for_the_retry(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    if app.state.database.engine.dialect.name != "postgresql":
        pytest.skip("a SQLite file has no connection to lose")
    # The connection that inserts this song is ended by the server, mid-statement.
    doomed = [
        "CREATE FUNCTION end_own_backend() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$",
        "CREATE TRIGGER end_own_backend BEFORE INSERT ON song FOR EACH ROW "
        "WHEN (NEW.name = 'Doomed') EXECUTE FUNCTION end_own_backend()",
    ]
    async with app.state.database.engine.begin() as connection:
        for statement in doomed:
            await connection.exec_driver_sql(statement)
    try:
        lost = await client.post("/songs", json={"name": "Doomed", "artist": "X"}, headers=key("lost"))
    finally:
        async with app.state.database.engine.begin() as connection:
            await connection.exec_driver_sql("DROP TRIGGER end_own_backend ON song")
            await connection.exec_driver_sql("DROP FUNCTION end_own_backend()")

    retry = await client.post("/songs", json={"name": "Doomed", "artist": "X"}, headers=key("lost"))

    assert lost.status_code == 503
    assert retry.status_code == 201  # not 409: the claim was freed, on a connection of its own
    assert "idempotent-replayed" not in retry.headers


@asynccontextmanager
async def holding_song_inserts(db: Database) -> AsyncIterator[None]:
    """Inserts of `SONG` wait for the block to end: on PostgreSQL for the test's own insert of it (its
    transaction holds the song's keys in the unique index), on SQLite for the write lock.

    A write held so is under way: past its key's lock, in the one statement of a foreseen create too.
    """
    async with db.engine.connect() as connection:
        if db.dialect == "postgresql":
            await connection.begin()
            await connection.execute(insert(Song).values(SONG | derived_columns(SONG)))
        else:
            await connection.execution_options(**WRITE_OPTIONS)
            await connection.begin()
        yield
        await connection.rollback()


async def inserts_waiting(db: Database) -> bool:
    """Whether an insert waits for another transaction's row (PostgreSQL)."""
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'transactionid' AND query LIKE '%INSERT INTO%'"
    )
    async with db.engine.connect() as connection:
        return bool((await connection.exec_driver_sql(waiting)).scalar_one())


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 10
    while not await condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        await asyncio.sleep(0.02)


# A keyed write of SONG on each route that takes an Idempotency-Key: its path, body and status.
ROUTES = {"create": ("/songs", SONG, 201), "batch": ("/songs/batch", [SONG], 200)}


@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_retry_while_the_first_is_running_is_409_at_once(
    client: httpx.AsyncClient, db: Database, route: str
) -> None:
    path, body, created = ROUTES[route]
    await count_songs(client)  # the key's use recorded, a write of its own, before the test holds the writes
    before = await scrape(client)
    async with holding_song_inserts(db):
        first = asyncio.create_task(client.post(path, json=body, headers=key("slow")))

        async def in_flight() -> bool:
            return bool(idempotency._in_flight)

        await wait_for(in_flight, "the first request under way")
        started = time.monotonic()
        retry = await client.post(path, json=body, headers=key("slow"))
        waited = time.monotonic() - started
        still_running = not first.done()
    answered = await first
    replayed = await client.post(path, json=body, headers=key("slow"))
    after = await scrape(client)

    assert retry.status_code == 409
    assert retry.json()["code"] == "idempotency-key-in-use"
    assert still_running
    assert waited < 2  # not the first's time: it waits for the test's lock as long as the test holds it
    assert answered.status_code == created
    assert replayed.headers["idempotent-replayed"] == "true"
    assert await count_songs(client) == 1
    for counter in ("songbook_idempotency_conflicts_total", "songbook_idempotency_replays_total"):
        assert value(after, counter) - value(before, counter) == 1


@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_retry_on_another_instance_while_the_first_is_running_is_409_at_once(
    app: FastAPI, client: httpx.AsyncClient, db: Database, settings: Settings, route: str
) -> None:
    path, body, created = ROUTES[route]
    if db.dialect != "postgresql":
        pytest.skip("SQLite's writers take turns: another process's retry waits for the first, then replays it")
    other_instance = create_app(settings)
    async with LifespanManager(other_instance), client_for(other_instance, None) as other:
        other.headers["Authorization"] = client.headers["authorization"]
        async with holding_song_inserts(db):
            first = asyncio.create_task(client.post(path, json=body, headers=key("slow")))

            # The first holds the key's advisory lock, and waits for the test's insert of the song to write it.
            await wait_for(lambda: inserts_waiting(db), "the first request's insert waiting")
            started = time.monotonic()
            retry = await other.post(path, json=body, headers=key("slow"))
            waited = time.monotonic() - started
            still_running = not first.done()
        answered = await first
        replayed = await other.post(path, json=body, headers=key("slow"))

    assert retry.status_code == 409
    assert retry.json()["code"] == "idempotency-key-in-use"
    assert still_running
    assert waited < 2
    assert answered.status_code == created
    assert replayed.headers["idempotent-replayed"] == "true"
    assert await count_songs(client) == 1


async def test_keys_and_answers_with_quotes_and_dollars_are_kept_as_they_are(client: httpx.AsyncClient) -> None:
    hostile = "k'$$\\x00;--\"$"
    song = {"name": "It's $$ \\'; DROP TABLE song; --", "artist": "Ünïcødé \u2603"}

    first = await client.post("/songs", json=song, headers=key(hostile))
    retry = await client.post("/songs", json=song, headers=key(hostile))

    assert first.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    assert first.json()["name"] == song["name"]
    assert await count_songs(client) == 1
