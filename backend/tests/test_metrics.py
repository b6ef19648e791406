"""GET /metrics: Prometheus's text format, read back with prometheus_client's own parser.

The metrics are the process's: each test compares what its requests added.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import URL

from app import metrics
from app.config import Settings
from app.db import Database
from app.main import VERSION
from tests.conftest import client_for
from tests.factories import make_song
from tests.server import serving
from tests.test_ratelimit import service

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, route: str, status: int, method: str = "GET") -> float:
    labels = {"http_request_method": method, "http_route": route, "http_response_status_code": str(status)}
    return value(samples, "http_server_request_duration_seconds_count", **labels)


async def test_requests_are_counted_by_method_route_template_and_status(
    client: httpx.AsyncClient, db: Database
) -> None:
    song = await make_song(db)
    before = await scrape(client)
    for _ in range(3):
        await client.get(f"/songs/{song['id']}")
    await client.get("/songs/999999")
    await client.delete(f"/songs/{song['id']}")
    after = await scrape(client)

    assert requests(after, "/songs/{song_id}", 200) - requests(before, "/songs/{song_id}", 200) == 3
    assert requests(after, "/songs/{song_id}", 404) - requests(before, "/songs/{song_id}", 404) == 1
    assert requests(after, "/songs/{song_id}", 204, "DELETE") - requests(before, "/songs/{song_id}", 204, "DELETE") == 1
    buckets = [
        key
        for key in after
        if key[0] == "http_server_request_duration_seconds_bucket"
        and ("http_route", "/songs/{song_id}") in key[1]
        and ("http_response_status_code", "200") in key[1]
    ]
    bounds = sorted({float(dict(labels)["le"]) for _, labels in buckets})
    assert bounds[0] == 0.005
    assert bounds[-2:] == [10.0, float("inf")]
    # The scrape itself is running as it is read.
    assert value(after, "http_server_active_requests", http_request_method="GET") >= 1


async def test_the_openapi_document_is_counted_under_its_route(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    await client.get("/openapi.json")
    after = await scrape(client)

    assert requests(after, "/openapi.json", 200) - requests(before, "/openapi.json", 200) == 1


async def test_a_thousand_random_paths_add_no_series(client: httpx.AsyncClient) -> None:
    await client.get(f"/{uuid.uuid4().hex}")
    before = await scrape(client)
    for _ in range(1000):
        await client.request("GET", f"/{uuid.uuid4().hex}/{uuid.uuid4().hex}")
    after = await scrape(client)

    assert set(after) - set(before) == set()
    assert requests(after, metrics.UNMATCHED_ROUTE, 404) - requests(before, metrics.UNMATCHED_ROUTE, 404) == 1000


async def test_unknown_methods_share_one_value(client: httpx.AsyncClient) -> None:
    await client.request("BREW", "/songs")
    samples = await scrape(client)

    assert requests(samples, "/songs", 405, "_OTHER") >= 1
    assert not any(("http_request_method", "BREW") in labels for _, labels in samples)


async def test_songbooks_own_counters(client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    before = await scrape(client)
    created = await client.post("/songs", json={"name": "Help!", "artist": "The Beatles"})
    song_id = created.json()["id"]
    await client.patch(f"/songs/{song_id}", json={"year": 1965})
    await client.post("/songs/batch", json=[{"name": "Yesterday", "artist": "The Beatles"}, {"name": "Hey Jude"}])
    await client.post("/songs/batch", json=[{"name": "A", "artist": "B"}, {"name": "C", "artist": "D"}])
    await client.delete(f"/songs/{song_id}")
    keyed = {"Idempotency-Key": uuid.uuid4().hex}
    await client.post("/songs", json={"name": "Michelle", "artist": "The Beatles"}, headers=keyed)
    replayed = await client.post("/songs", json={"name": "Michelle", "artist": "The Beatles"}, headers=keyed)
    await client.get("/songs", params={"q": "michelle"})
    await client.get("/songs", params={"q": "qqqqqqqq"})
    after = await scrape(client)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert added("songbook_songs_changed_total", operation="create", via="api") == 2
    assert added("songbook_songs_changed_total", operation="update", via="api") == 1
    assert added("songbook_songs_changed_total", operation="delete", via="api") == 1
    assert added("songbook_songs_changed_total", operation="create", via="batch") == 2  # one batch was refused
    # "michelle" is found in tier 1; "qqqqqqqq" starts no word (tier 1 finds nothing) and is close to none.
    assert added("songbook_search_queries_total", tier="1") == 2
    assert added("songbook_idempotency_replays_total") == 1


async def test_rate_limit_rejections_are_counted_by_what_was_limited(settings: Settings) -> None:
    limits = {"anonymous_rate_limit_per_second": 0.1, "anonymous_rate_limit_burst": 2}
    async with service(settings, **limits) as app, client_for(app, None) as anonymous:
        before = parse((await anonymous.get("/metrics")).text)  # Prometheus is not limited
        statuses = [(await anonymous.get("/songs")).status_code for _ in range(4)]
        after = parse((await anonymous.get("/metrics")).text)

    assert statuses == [200, 200, 429, 429]
    rejections = "songbook_rate_limit_rejections_total"
    assert value(after, rejections, caller="address") - value(before, rejections, caller="address") == 2


async def test_the_pools_and_the_build(app: FastAPI, client: httpx.AsyncClient) -> None:
    database: Database = app.state.database
    samples = await scrape(client)

    assert value(samples, "songbook_build_info", version=VERSION, database=database.dialect) == 1
    pools = ["session"] if database.pool is None else ["hot", "session"]
    for pool in pools:
        for state in ("used", "idle"):
            assert ("db_client_connection_count", frozenset({("pool_name", pool), ("state", state)})) in samples
        used = value(samples, "db_client_connection_count", pool_name=pool, state="used")
        idle = value(samples, "db_client_connection_count", pool_name=pool, state="idle")
        assert 0 <= used + idle <= value(samples, "db_client_connection_max", pool_name=pool)
    if database.pool is not None:
        assert value(samples, "db_client_connection_max", pool_name="hot") == database.pool.get_max_size()
        assert ("db_client_connection_pending_requests", frozenset({("pool_name", "hot")})) in samples


async def test_metrics_off_serves_none_and_counts_none(settings: Settings) -> None:
    async with service(settings, metrics=False) as app, client_for(app, None) as anonymous:
        before = metrics.exposition()
        answer = await anonymous.get("/metrics")
        await anonymous.get("/songs")
        after = metrics.exposition()

    assert answer.status_code == 404
    assert requests(parse(after.decode()), "/songs", 200) == requests(parse(before.decode()), "/songs", 200)


def healthz_counted(base: str) -> float:
    return requests(parse(httpx.get(f"{base}/metrics").text), "/healthz", 200)


def eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_two_workers_add_up(catalog: URL, tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "SONGBOOK_LOG_LEVEL": "warning"}
    with serving(tmp_path, env, "--workers", "2") as server:
        sent = 0
        # A connection per request, until both workers have answered some.
        while len({path.name.rsplit("_", 1)[-1] for path in folder.glob("histogram_*.db")}) < 2 and sent < 2000:
            httpx.get(f"{server.base}/healthz", headers={"Connection": "close"}).raise_for_status()
            sent += 1
        for _ in range(50):
            httpx.get(f"{server.base}/healthz", headers={"Connection": "close"}).raise_for_status()
        sent += 50
        # A request is counted just after its answer: the last ones may be a moment late.
        eventually(lambda: healthz_counted(server.base) == sent)
        scrapes = [healthz_counted(server.base) for _ in range(6)]

    assert len({path.name for path in folder.glob("histogram_*.db")}) == 2
    # Whichever worker answers the scrape, it counts both workers' requests.
    assert set(scrapes) == {sent}


def test_a_killed_workers_gauges_no_longer_count(catalog: URL, tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "SONGBOOK_LOG_LEVEL": "warning"}
    with serving(tmp_path, env, "--workers", "2") as server:

        def pool_max() -> float:
            samples = parse(httpx.get(f"{server.base}/metrics").text)
            return value(samples, "db_client_connection_max", pool_name="session")

        def all_sampled() -> bool:  # each worker sets its pools' gauges within a second of starting
            workers = server.workers()
            sampled = {int(path.stem.rsplit("_", 1)[1]) for path in folder.glob("gauge_livesum_*.db")}
            return len(workers) == 2 and set(workers) <= sampled

        eventually(all_sampled, 30)
        both = pool_max()
        killed = server.workers()[0]
        os.kill(killed, signal.SIGKILL)  # uvicorn starts another in its place
        eventually(lambda: killed not in server.workers(), 30)
        eventually(all_sampled, 30)
        after = pool_max()

    assert both > 0
    assert after == both


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_starts_the_shared_folder_fresh(catalog: URL, tmp_path: Path, workers: str) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_12345.db").write_bytes(b"left by an earlier run")
    with serving(tmp_path, {"PROMETHEUS_MULTIPROC_DIR": str(folder)}, "--workers", workers) as server:
        answer = httpx.get(f"{server.base}/metrics")
        counted = healthz_counted(server.base)

    assert answer.status_code == 200
    assert not (folder / "counter_12345.db").exists()
    assert counted == 0  # nothing of another run's


WORKER_SEES_A_REPLICA = """
import os, signal, sys
from app import metrics
metrics.observe_replica("replica db2:5432", float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "usable")
if sys.argv[4] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdout.buffer.write(metrics.exposition())
"""


def test_a_killed_workers_replica_gauges_no_longer_count(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def worker(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", WORKER_SEES_A_REPLICA, *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    killed = worker("30.0", "5000000", "unusable", "killed")
    alive = worker("0.2", "100", "usable", "alive")

    assert killed.returncode == -signal.SIGKILL
    samples = parse(alive.stdout)
    assert value(samples, "songbook_replica_lag_seconds", replica="replica db2:5432") == 0.2
    assert value(samples, "songbook_replica_usable", replica="replica db2:5432") == 1
