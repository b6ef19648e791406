"""Prometheus metrics (prometheus_client), named as OpenTelemetry's semantic conventions are exported to Prometheus.

`GET /metrics` (`routes/health.py`) serves them when `SONGBOOK_METRICS` is on.

With several workers (`songbook serve --workers N`), each is a process of its
own: prometheus_client's multiprocess mode keeps every worker's values in
files under `PROMETHEUS_MULTIPROC_DIR`, and a scrape, whichever worker answers
it, adds them up. `songbook serve` makes that folder fresh at start-up. The
mode is chosen when prometheus_client is imported: the variable must be set
before the worker starts, as the command does.
"""

import collections
import os
from dataclasses import dataclass
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

MULTIPROCESS_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE: Final = "unmatched"

# OpenTelemetry's advice for http.server.request.duration, in seconds.
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

registry = CollectorRegistry()


def multiprocess_dir() -> str | None:
    """The folder the workers share their values in; None when the process counts alone."""
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


_shared = multiprocess_dir()
if _shared is None:
    # CPU, memory and open files of the process; multiprocess mode has no such figures.
    ProcessCollector(registry=registry)
else:
    os.makedirs(_shared, exist_ok=True)  # each metric below opens its file in it

# HTTP, as the semantic conventions' http.server.* metrics.
request_duration = Histogram(
    "http_server_request_duration_seconds",
    "Duration of HTTP server requests.",
    ["http_request_method", "http_route", "http_response_status_code"],
    buckets=DURATION_BUCKETS,
    registry=registry,
)
active_requests = Gauge(
    "http_server_active_requests",
    "Number of active HTTP server requests.",
    ["http_request_method"],
    multiprocess_mode="livesum",
    registry=registry,
)

# The database's connection pools, as the db.client.connection.* metrics: "hot" is the
# asyncpg pool of the single statements (PostgreSQL only), "session" SQLAlchemy's.
connections = Gauge(
    "db_client_connection_count",
    "Connections of the pool, by state.",
    ["pool_name", "state"],
    multiprocess_mode="livesum",
    registry=registry,
)
connections_max = Gauge(
    "db_client_connection_max",
    "The most connections the pool opens.",
    ["pool_name"],
    multiprocess_mode="livesum",
    registry=registry,
)
pending_requests = Gauge(
    "db_client_connection_pending_requests",
    "Requests waiting for a connection of the pool.",
    ["pool_name"],
    multiprocess_mode="livesum",
    registry=registry,
)

# Songbook's own.
database_errors = Counter(
    "songbook_db_errors",
    "Errors of the database answered as 503 or 500, by the error's class.",
    ["error_type"],
    registry=registry,
)
unavailable = Counter(
    "songbook_unavailable_responses",
    "503 answers (the database is away, slow or busy), by problem code.",
    ["code"],
    registry=registry,
)
rate_limited = Counter(
    "songbook_rate_limit_rejections",
    "Requests refused with 429, by what was limited: a key or a client address.",
    ["caller"],
    registry=registry,
)
idempotent_replays = Counter(
    "songbook_idempotency_replays",
    "Retries answered with the first answer to their Idempotency-Key.",
    registry=registry,
)
idempotency_conflicts = Counter(
    "songbook_idempotency_conflicts",
    "Retries refused with 409 while the first request with their Idempotency-Key was still running.",
    registry=registry,
)
songs_changed = Counter(
    "songbook_songs_changed",
    "Songs created, updated or deleted, through single requests (api) or batches (batch).",
    ["operation", "via"],
    registry=registry,
)
searches = Counter(
    "songbook_search_queries",
    "Searches (GET /songs?q=), by the deepest tier of relevance they had to query; none for a query of no word.",
    ["tier"],
    registry=registry,
)
# Read replicas (app/replicas.py), as each live worker's poller last saw them (a killed worker's are dropped).
replica_lag = Gauge(
    "songbook_replica_lag_seconds",
    "How stale a read replica's data may be: the time since the primary had no more than it has replayed.",
    ["replica"],
    multiprocess_mode="livemax",
    registry=registry,
)
replica_reads = Counter(
    "songbook_replica_reads",
    "Reads answered by a read replica: single statements and units of work (the others, by the primary).",
    ["replica"],
    registry=registry,
)
replica_lag_bytes = Gauge(
    "songbook_replica_lag_bytes",
    "How far a read replica's replay is behind the primary's WAL position, in bytes.",
    ["replica"],
    multiprocess_mode="livemax",
    registry=registry,
)
replica_usable = Gauge(
    "songbook_replica_usable",
    "1 while a read replica is within the bound on staleness and answering, else 0.",
    ["replica"],
    multiprocess_mode="livemin",
    registry=registry,
)
build_info = Gauge(
    "songbook_build_info",
    "Always 1: the version of songbook and the kind of database it runs on, as labels.",
    ["version", "database"],
    multiprocess_mode="max",
    registry=registry,
)


@dataclass(frozen=True)
class PoolUsage:
    """One connection pool, as sampled."""

    name: str
    used: int
    idle: int
    max: int
    pending: int | None  # None where the pool cannot tell


# Requests being answered, by method: counted in a plain dict by the middleware, and set on
# `active_requests` when sampled (at a scrape; with several workers, every second too). A
# gauge's inc() and dec() take a lock each: on every request, a third of the metrics' cost.
active: collections.Counter[str] = collections.Counter()


def sample(pools: list[PoolUsage]) -> None:
    """Sets the gauges that are read rather than counted: active requests and the pools."""
    for method, count in active.items():
        active_requests.labels(method).set(count)
    for pool in pools:
        connections.labels(pool.name, "used").set(pool.used)
        connections.labels(pool.name, "idle").set(pool.idle)
        connections_max.labels(pool.name).set(pool.max)
        if pool.pending is not None:
            pending_requests.labels(pool.name).set(pool.pending)


def observe_replica(name: str, lag_seconds: float | None, lag_bytes: int | None, usable: bool) -> None:
    """Sets a read replica's gauges, at each poll; an unknown lag is left out (NaN)."""
    replica_lag.labels(name).set(float("nan") if lag_seconds is None else lag_seconds)
    replica_lag_bytes.labels(name).set(float("nan") if lag_bytes is None else lag_bytes)
    replica_usable.labels(name).set(int(usable))


def exposition() -> bytes:
    """Every metric in the Prometheus text format: this process's, or every worker's."""
    shared = multiprocess_dir()
    if shared is None:
        return generate_latest(registry)
    _forget_dead_workers(shared)
    workers = CollectorRegistry()
    multiprocess.MultiProcessCollector(workers)  # type: ignore[no-untyped-call]
    return generate_latest(workers)


def forget_process() -> None:
    """At a worker's exit: its live gauges (active requests, pools) no longer count."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _forget_dead_workers(path: str) -> None:
    # A worker killed (by uvicorn, for hanging; by the kernel, out of memory) leaves its live
    # gauges behind: they would be added in for ever.
    for pid in {int(name.rsplit("_", 1)[1][:-3]) for name in os.listdir(path) if name.startswith("gauge_live")}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's


def prepare_multiprocess_dir(path: str) -> None:
    """Empties `path` for a fresh start (but this process's own files, opened at import): values
    a previous run left would be added to this one's."""
    os.makedirs(path, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for name in os.listdir(path):
        if name.endswith(".db") and not name.endswith(own):
            os.remove(os.path.join(path, name))
