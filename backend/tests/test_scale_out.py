"""Several worker processes (`songbook serve --workers 2`) keep nothing apart that they must share.

The rate limits are shared through Redis, the idempotency keys through the
database: whichever worker takes a request, the outcome is the one a single
process would give. Requests each come on a connection of their own, which
the kernel hands to either worker.
"""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from app.cli import cli
from tests.catalog import rows
from tests.server import free_port
from tests.test_ratelimit import redis_url

BURST = 5


@pytest.fixture
def two_workers(catalog: URL) -> Iterator[tuple[str, str]]:
    """The service with two workers, Redis for its limits; its address and a write key."""
    key = CliRunner().invoke(cli, ["keys", "create", "--name", "workers", "--scope", "write"]).stdout.strip()
    port = free_port()
    limits = {
        "SONGBOOK_REDIS_URL": redis_url(),
        # A burst and next to no refill: what passes is the burst, counted once for both workers.
        "SONGBOOK_ANONYMOUS_RATE_LIMIT_BURST": str(BURST),
        "SONGBOOK_ANONYMOUS_RATE_LIMIT_PER_SECOND": "0.001",
    }
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "songbook"), "serve", "--port", str(port), "--workers", "2"],
        env={**os.environ, "SONGBOOK_LOG_LEVEL": "warning", **limits},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "the service exited"
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.1)
        yield base, key
    finally:
        server.terminate()
        server.wait(timeout=30)


def in_parallel(count: int, request: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(request, range(count)))


def test_the_workers_share_one_rate_limit(two_workers: tuple[str, str]) -> None:
    base, _ = two_workers
    # Each client address its own bucket: one believed from X-Forwarded-For (the proxy is 127.0.0.1).
    address, other = (f"2001:db8::{uuid.uuid4().hex[:4]}" for _ in range(2))  # buckets no other run has used

    def read(_: int) -> httpx.Response:
        headers = {"Connection": "close", "X-Forwarded-For": address}
        return httpx.get(f"{base}/songs", headers=headers)

    statuses = sorted(response.status_code for response in in_parallel(4 * BURST, read))
    other_address = httpx.get(f"{base}/songs", headers={"X-Forwarded-For": other})

    assert statuses == [200] * BURST + [429] * (3 * BURST)
    assert other_address.status_code == 200


def test_the_workers_share_the_idempotency_keys(two_workers: tuple[str, str], catalog: URL) -> None:
    base, key = two_workers
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4()), "Connection": "close"}

    def create(_: int) -> httpx.Response:
        return httpx.post(f"{base}/songs", json={"name": "Once", "artist": "Only"}, headers=headers)

    first = create(0)
    retries = in_parallel(10, create)

    assert first.status_code == 201
    assert [(retry.status_code, retry.headers["Idempotent-Replayed"]) for retry in retries] == [(201, "true")] * 10
    assert {retry.json()["id"] for retry in retries} == {first.json()["id"]}
    assert [row[1:3] for row in rows(catalog)] == [("Once", "Only")]
