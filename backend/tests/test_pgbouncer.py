"""The service through PgBouncer in transaction pooling mode, with the `pgbouncer` setting.

Each transaction may get another server connection there: a statement prepared
under a name on one is missing on the next, and a session's SET is lost. The
test starts a PgBouncer of its own in front of the PostgreSQL of the tests,
with fewer server connections than the service has clients, and runs the core
paths concurrently through it. It needs Debian's `pgbouncer` package: it is
skipped without it, unless TEST_REQUIRE_PGBOUNCER is set (as CI does).
"""

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import URL

from app.config import Settings
from app.main import create_app
from tests.catalog import empty_catalog
from tests.conftest import client_for, make_key, postgres_base_url
from tests.server import free_port

SERVER_CONNECTIONS = 2  # per database and user: far fewer than the service's clients


def pgbouncer_binary() -> str:
    """PgBouncer's program; the test is skipped without it, unless TEST_REQUIRE_PGBOUNCER is set."""
    binary = shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(path).exists()), None
    )
    if binary is None:
        if os.environ.get("TEST_REQUIRE_PGBOUNCER"):
            pytest.fail("PgBouncer is not installed, and TEST_REQUIRE_PGBOUNCER is set")
        pytest.skip("PgBouncer is not installed (Debian: apt-get install pgbouncer)")
    return binary


@contextmanager
def running_pgbouncer(host: str, port: int, user: str, settings: str = "") -> Iterator[int]:
    """A PgBouncer in transaction pooling mode before the PostgreSQL at `host`:`port`, with more `settings`
    (ini lines); the port to reach it."""
    binary = pgbouncer_binary()
    own_port = free_port()
    # PgBouncer will not run as root: as root it is started as the postgres user,
    # which must be able to read its files.
    folder = Path(tempfile.mkdtemp(prefix="songbook-pgbouncer-"))
    folder.chmod(0o755)
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={host} port={port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {own_port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\nmax_client_conn = 200\n{settings}"
    )
    for path in folder.iterdir():
        path.chmod(0o666)
    as_postgres = ["-u", "postgres"] if os.geteuid() == 0 else []
    log = folder / "pgbouncer.log"
    with log.open("wb") as output:
        process = subprocess.Popen([binary, *as_postgres, str(folder / "pgbouncer.ini")], stderr=output)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", own_port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"PgBouncer did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield own_port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[URL]:
    """A PgBouncer before the tests' PostgreSQL; the URL to reach it."""
    database = postgres_base_url()
    host, port = database.host or "127.0.0.1", database.port or 5432
    with running_pgbouncer(host, port, database.username or "postgres") as own_port:
        yield database.set(host="127.0.0.1", port=own_port)


@pytest.fixture
async def service(pgbouncer: URL, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """The service through PgBouncer: a client with a write key, and one without."""
    settings = Settings(
        database_url=pgbouncer.render_as_string(hide_password=False),
        data_dir=tmp_path,
        pgbouncer=True,
        pool_size=8,
        rate_limit_per_second=0,
        anonymous_rate_limit_per_second=0,
    )
    app = create_app(settings)
    async with LifespanManager(app):
        await empty_catalog(app.state.database.engine)
        key = await make_key(app, "write")
        async with client_for(app, key) as writer, client_for(app, None) as reader:
            yield writer, reader


async def test_the_core_paths_work_through_pgbouncer_in_transaction_mode(
    service: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    writer, reader = service

    async def add(i: int) -> int:
        headers = {"Idempotency-Key": f"add-{i}"}
        created = await writer.post("/songs", json={"name": f"Song {i}", "artist": f"Artist {i % 7}"}, headers=headers)
        assert created.status_code == 201, created.text
        replayed = await writer.post("/songs", json={"name": f"Song {i}", "artist": f"Artist {i % 7}"}, headers=headers)
        assert replayed.headers["Idempotent-Replayed"] == "true"
        return int(created.json()["id"])

    ids = await asyncio.gather(*(add(i) for i in range(40)))

    async def read_and_edit(song_id: int) -> None:
        read = await reader.get(f"/songs/{song_id}")
        assert read.status_code == 200, read.text
        edited = await writer.patch(
            f"/songs/{song_id}", json={"year": 1999}, headers={"If-Match": read.headers["ETag"]}
        )
        assert edited.status_code == 200, edited.text
        assert edited.headers["ETag"] == '"2"'

    await asyncio.gather(*(read_and_edit(song_id) for song_id in ids))

    pages = [await reader.get("/songs", params={"limit": 15, "sort": "-year,name"})]
    while "link" in pages[-1].headers:
        pages.append(await reader.get(pages[-1].headers["link"].split(">")[0].strip("<")))
    listed = [song["id"] for page in pages for song in page.json()]
    assert sorted(listed) == sorted(ids)
    assert all(song["year"] == 1999 for page in pages for song in page.json())

    batch_in = [{"name": "Song 1", "artist": "Artist 1"}, {"name": "New", "artist": "B"}]
    batch = await writer.post("/songs/batch", json=batch_in, headers={"Idempotency-Key": "batch"})
    assert [item["status"] for item in batch.json()["items"]] == ["duplicate", "created"]
    batch_again = await writer.post("/songs/batch", json=batch_in, headers={"Idempotency-Key": "batch"})
    assert batch_again.headers["Idempotent-Replayed"] == "true"
    assert batch_again.json() == batch.json()
    searched = await reader.get("/songs", params={"q": "song", "limit": 100}, headers={"Prefer": "count=exact"})
    assert searched.headers["X-Total-Count"] == "40"
    exported = await reader.get("/songs", headers={"Accept": "text/csv"})
    assert len(exported.text.strip().splitlines()) == 1 + 41
    deleted = await writer.delete(f"/songs/{ids[0]}")
    assert deleted.status_code == 204
    assert (await reader.get(f"/songs/{ids[0]}")).status_code == 404
