"""The database restarted, crashed or its connections ended, under load: never a 500, nothing lost or doubled."""

import asyncio
import collections
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app import schema
from app.config import Settings, async_url
from app.main import create_app
from tests.catalog import empty_catalog
from tests.conftest import client_for, make_key
from tests.pgcluster import Cluster

WORKERS = 8
# Every kind of request, reads and writes: a create with an Idempotency-Key is sent again (the same
# key) after a 503, until it is answered 201, as a careful client does.
ALL_KINDS = ("read", "page", "search", "create", "keyed", "batch", "export")
KEYED_TRIES = 20


@asynccontextmanager
async def service(url: str, **options: object) -> AsyncIterator[httpx.AsyncClient]:
    """The service on the database at `url`, migrated and emptied, without keys or rate limits."""
    await asyncio.to_thread(schema.upgrade, async_url(url))
    settings = Settings(
        database_url=url,
        **options,  # type: ignore[arg-type]
        rate_limit_per_second=0,
        anonymous_rate_limit_per_second=0,
        require_write_key=False,
        access_log=False,
    )
    application = create_app(settings)
    async with LifespanManager(application):
        await empty_catalog(application.state.database.engine)
        # A key of its own: idempotent retries are kept by key.
        async with client_for(application, await make_key(application, "write")) as client:
            yield client


class Load:
    """Clients reading songs, pages and searches and creating songs, each answer kept."""

    def __init__(self, client: httpx.AsyncClient, *, kinds: tuple[str, ...] = ALL_KINDS) -> None:
        self.client = client
        self.kinds = kinds
        self.answers: collections.Counter[tuple[str, int]] = collections.Counter()
        self.created: list[str] = []
        self.unanswered: list[str] = []  # batches answered 503 that the server may have written
        # Each answer that was not a success: when (monotonic), to what kind of request, and why.
        self.failures: list[tuple[float, str, int, str]] = []
        self._stop = asyncio.Event()

    async def run(self, worker: int) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            kind = self.kinds[number % len(self.kinds)]
            if kind == "read":
                answer = await self.client.get(f"/songs/{random.randint(1, 20)}")
            elif kind == "page":
                answer = await self.client.get("/songs", params={"limit": 20})
            elif kind == "search":
                answer = await self.client.get("/songs", params={"q": "song"})
            elif kind == "total":
                answer = await self.client.get("/songs", params={"artist": "Seed"}, headers={"Prefer": "count=exact"})
            elif kind == "artists":
                answer = await self.client.get("/artists", params={"prefix": "se"})
            elif kind == "export":
                answer = await self.client.get("/songs", params={"artist": "Seed"}, headers={"Accept": "text/csv"})
            elif kind == "batch":
                names = [f"Load {worker}-{number} {part}" for part in ("a", "b")]
                answer = await self.client.post("/songs/batch", json=[{"name": n, "artist": "Load"} for n in names])
                if answer.status_code == 200:
                    self.created += names
                elif answer.status_code == 503:
                    # Committed on a session: a restart may cut the answer after the COMMIT was sent.
                    self.unanswered += names
            elif kind == "keyed":
                answer = await self.keyed(f"Load {worker}-{number}")
            else:
                name = f"Load {worker}-{number}"
                answer = await self.client.post("/songs", json={"name": name, "artist": "Load"})
                if answer.status_code == 201:
                    self.created.append(name)
            self.answers[kind, answer.status_code] += 1
            if answer.status_code >= 500:
                self.failures.append((time.monotonic(), kind, answer.status_code, answer.text))

    async def keyed(self, name: str) -> httpx.Response:
        """A create with an Idempotency-Key, sent again with the same key after each 503."""
        headers = {"Idempotency-Key": name.replace(" ", "_")}
        for _ in range(KEYED_TRIES):
            answer = await self.client.post("/songs", json={"name": name, "artist": "Load"}, headers=headers)
            if answer.status_code != 503:
                break
            await asyncio.sleep(0.2)
        if answer.status_code == 201:
            self.created.append(name)
        return answer

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        workers = [asyncio.create_task(self.run(worker)) for worker in range(WORKERS)]
        try:
            yield
        finally:
            self._stop.set()
            await asyncio.gather(*workers)


async def seed(client: httpx.AsyncClient) -> None:
    for number in range(20):
        (await client.post("/songs", json={"name": f"Song {number}", "artist": "Seed"})).raise_for_status()


async def stored(url: str) -> collections.Counter[str]:
    """The names of the songs the load made, as many times as each is stored."""
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as connection:
            names = (await connection.execute(text("SELECT name FROM song WHERE artist = 'Load'"))).scalars()
            return collections.Counter(names)
    finally:
        await engine.dispose()


async def test_restarts_fast_and_immediate_are_503s_at_worst_and_lose_nothing(cluster: Cluster) -> None:
    async with service(cluster.url) as client:
        await seed(client)
        load = Load(client)
        async with load.running():
            for mode in ["fast", "immediate", "fast"]:
                await asyncio.sleep(1)
                await asyncio.to_thread(cluster.restart, mode)
            await asyncio.sleep(1)

    statuses = {status for _, status in load.answers}
    assert statuses <= {200, 201, 404, 503}, load.answers
    assert sum(count for (_, status), count in load.answers.items() if status in (200, 201)) > 100
    # Every song answered 201 (200 in a batch) is there, once; none that was not, but a batch's whose
    # answer the restart cut after its COMMIT went (a 503; not retried: Idempotency-Key is for that).
    kept = await stored(cluster.url)
    assert collections.Counter(load.created) <= kept
    assert set(kept - collections.Counter(load.created)) <= set(load.unanswered)
    assert max(kept.values()) == 1


async def test_reads_do_not_notice_their_connections_ended(cluster: Cluster) -> None:
    """Each is tried once more on a new connection: on the hot paths' pool (songs, pages) and on
    SQLAlchemy's (searches, totals, artists, exports)."""
    async with service(cluster.url) as client:
        await seed(client)
        load = Load(client, kinds=("read", "page", "search", "total", "artists", "export"))
        async with load.running():
            for _ in range(5):
                await asyncio.sleep(0.5)
                await asyncio.to_thread(cluster.terminate_backends)
            await asyncio.sleep(0.5)

    assert {status for _, status in load.answers} <= {200, 404}, load.answers
    assert {kind for kind, status in load.answers if status == 200} == set(load.kinds)
