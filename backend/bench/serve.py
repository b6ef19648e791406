"""Throughput of the hot routes, against plain FastAPI routes and a bare ASGI app doing the same: `make bench`.

    make bench                              # from the repository root
    uv run python bench/serve.py --help     # from backend/

It makes sure the bench catalog (BENCH_SERVE_DATABASE_URL, a PostgreSQL
database, made if missing) holds --count songs, starts `songbook serve` (one
worker), the reference (`reference_app.py`: bare ASGI) and the framework's
floor (`fastapi_app.py`: the same routes as plain FastAPI routes), each with
one uvicorn worker and a pool of the same size, and drives each with wrk at
--connections connections, route by route, alternating them --rounds times.
It prints the median requests/s, p50 and p99 latency and errors of each, the
CPU time its server process spends a request (from /proc: one uvicorn worker
uses a whole core under this load, so requests/s follow it), its share of
the reference's requests/s, and the service's targets (issue 15):
each hot route at least 0.9 of the floor's requests/s; the typo-tolerant
search at least 0.5 of the reference's plain prefix full-text query, with a
p99 within 1.2 times the floor's (the same plain query). The service
runs as its image ships it (JSON logs, access log and metrics on); for GET
/songs/{id} a second instance with both off ("quiet") runs beside it, and
the share the service keeps of quiet's requests/s is printed too. Keyed
creates (a write key and a new Idempotency-Key each) alternate with plain
creates on the same server ("unkeyed"), in the same rounds: keyed/unkeyed is
printed against its target (issue 15). Then the service's RSS across
--rss-requests requests, and its start-up time to ready.

The machine is shared and noisy: quote the ratios of one run, not absolute figures.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from queries import create_database, prepare

BENCH = Path(__file__).resolve().parent
BACKEND = BENCH.parent
BIN = Path(sys.executable).parent
WRK_SCRIPT = BENCH / "wrk" / "songbook.lua"
DEFAULT_URL = "postgresql://postgres@127.0.0.1/songbook_bench_serve"
POOL_SIZE = 10


@dataclass(frozen=True)
class Route:
    name: str
    modes: dict[str, str]  # the BENCH_MODE of the wrk script, by app; an app without one is not run
    of_floor: float | None = None  # the least share of the floor's requests/s
    of_reference: float | None = None  # the least share of the reference's requests/s
    p99_of_floor: float | None = None  # the most p99 may be, as a multiple of the floor's


# "quiet" is the service without its access log and metrics (request ids stay: they are not optional).
# "unkeyed" is the service again, sending plain creates in the same rounds as the keyed ones.
APPS = ("reference", "fastapi", "service", "unkeyed", "quiet")  # in the order each round runs them
QUIET_TARGET = 0.95  # the service as it ships, against quiet
KEYED_TARGET = 0.8  # a keyed create, against an unkeyed one in the same rounds (issue 15)
FLOOR_TARGET = 0.9  # each hot route, against the same route as plain FastAPI (issue 15)
ROUTES = [
    Route("GET /songs/{id}", {"reference": "get", "fastapi": "get", "service": "get", "quiet": "get"}, FLOOR_TARGET),
    Route("GET /songs?limit=50", {"reference": "list", "fastapi": "list", "service": "list"}, FLOOR_TARGET),
    # The service's search is typo-tolerant; the reference's and the floor's, a plain prefix full-text query.
    Route(
        "GET /songs?q=...",
        {"reference": "search", "fastapi": "search", "service": "search"},
        of_reference=0.5,
        p99_of_floor=1.2,
    ),
    Route("POST /songs", {"reference": "post", "fastapi": "post", "service": "post"}, FLOOR_TARGET),
    Route("POST /songs, key + Idempotency-Key", {"reference": "post", "service": "post-key", "unkeyed": "post"}),
]


@dataclass(frozen=True)
class Run:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = 0.0  # the server process's CPU time (user and system) a request


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used, user and system, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_env(url: str, *, quiet: bool = False) -> dict[str, str]:
    """The service as the container image ships it: JSON logs, the access log and the metrics on."""
    return {
        **os.environ,
        "DATABASE_URL": url,
        "SONGBOOK_LOG_LEVEL": "info",
        "SONGBOOK_LOG_FORMAT": "json",
        "SONGBOOK_ACCESS_LOG": str(not quiet).lower(),
        "SONGBOOK_METRICS": str(not quiet).lower(),
        "SONGBOOK_POOL_SIZE": str(POOL_SIZE),
        # Every request comes from one address: the limits are taken, never reached.
        "SONGBOOK_RATE_LIMIT_PER_SECOND": "1000000",
        "SONGBOOK_ANONYMOUS_RATE_LIMIT_PER_SECOND": "1000000",
        # For "POST /songs with auth off"; the keyed run sends a key all the same.
        "SONGBOOK_REQUIRE_WRITE_KEY": "false",
    }


def make_key(url: str) -> str:
    """A new write key of the bench catalog (named `bench-...`: `forget_writes` deletes it)."""
    return subprocess.run(
        [str(BIN / "songbook"), "keys", "create", "--name", f"bench-{time.time_ns()}", "--scope", "write"],
        cwd=BACKEND,
        env=service_env(url),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]


def wait_ready(base: str, path: str, process: subprocess.Popen[bytes], timeout: float = 30) -> float:
    """Seconds until `path` answers 200."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"{base} exited with status {process.returncode}")
        try:
            if httpx.get(base + path, timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise SystemExit(f"{base}{path} was not ready in {timeout} s")


@contextmanager
def running(command: list[str], env: dict[str, str], ready_path: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    # The logs go to a file, as a container's do: written, not shown.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=BACKEND, env=env, stdout=log, stderr=log)
        try:
            wait_ready(f"http://127.0.0.1:{port}", ready_path, process)
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def service(port: int) -> list[str]:
    return [str(BIN / "songbook"), "serve", "--port", str(port), "--workers", "1"]


def uvicorn(app: str, port: int) -> list[str]:
    command = [str(BIN / "uvicorn"), app, "--app-dir", str(BENCH), "--port", str(port)]
    return [*command, "--no-access-log", "--log-level", "warning"]


def wrk(port: int, mode: str, seconds: int, connections: int, env: dict[str, str], pid: int | None = None) -> Run:
    """A wrk run against `port`; with the `pid` of the server, its CPU time a request too."""
    used = cpu_seconds(pid) if pid is not None else 0.0
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}"],
        env={**os.environ, **env, "BENCH_MODE": mode},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(output.strip().splitlines()[-1])
    used = cpu_seconds(pid) - used if pid is not None else 0.0
    return Run(
        report["requests"] / report["seconds"],
        report["p50_ms"],
        report["p99_ms"],
        report["status_errors"] + report["socket_errors"],
        used / max(report["requests"], 1) * 1e6,
    )


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(run.requests_per_second for run in runs),
        statistics.median(run.p50_ms for run in runs),
        statistics.median(run.p99_ms for run in runs),
        sum(run.errors for run in runs),
        statistics.median(run.cpu_us for run in runs),
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no RSS for process {pid}")


def startup_seconds(url: str, times: int) -> float:
    """The median time from `songbook serve` to its first ready answer."""
    seconds = []
    for _ in range(times):
        port = free_port()
        process = subprocess.Popen(service(port), cwd=BACKEND, env=service_env(url), stderr=subprocess.DEVNULL)
        try:
            seconds.append(wait_ready(f"http://127.0.0.1:{port}", "/readyz", process))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="songs in the catalog")
    parser.add_argument("--seconds", type=int, default=8, help="of load per route, app and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of reference and service")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rss-requests", type=int, default=200_000, help="requests to watch the RSS across")
    parser.add_argument(
        "--only", metavar="TEXT", help="only the routes named with TEXT ('GET /songs/{id}'); no RSS, no start-up"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: install it (Debian: apt-get install wrk)")
    url = os.environ.get("BENCH_SERVE_DATABASE_URL", DEFAULT_URL)
    if not url.startswith("postgres"):
        raise SystemExit("BENCH_SERVE_DATABASE_URL must be a PostgreSQL database: the reference is asyncpg")
    print(f"catalog: {args.count:,} songs", flush=True)
    asyncio.run(create_database(url))
    asyncio.run(forget_writes(url, keep=args.count))  # of a run cut short
    max_id = prepare(url, args.count)
    loads = {"SONGS_N": str(max_id), "BENCH_KEY": make_key(url)}
    reference_env = {**os.environ, "REFERENCE_DSN": url, "REFERENCE_POOL": str(POOL_SIZE), "PYTHONPATH": str(BACKEND)}

    try:
        measure(url, args, loads, reference_env)
    finally:
        asyncio.run(forget_writes(url, keep=args.count))
    if args.only is None:
        print(f"start-up to ready (median of 5): {startup_seconds(url, 5):.2f} s (target < 2 s)")


def measure(url: str, args: argparse.Namespace, loads: dict[str, str], reference_env: dict[str, str]) -> None:
    ports = {which: free_port() for which in APPS}
    ports["unkeyed"] = ports["service"]
    with (
        running(service(ports["service"]), service_env(url), "/readyz", ports["service"]) as server,
        running(service(ports["quiet"]), service_env(url, quiet=True), "/readyz", ports["quiet"]) as quiet,
        running(uvicorn("reference_app:app", ports["reference"]), reference_env, "/songs/1", ports["reference"]) as ref,
        running(uvicorn("fastapi_app:app", ports["fastapi"]), reference_env, "/songs/1", ports["fastapi"]) as floor,
    ):
        pids = {"service": server.pid, "unkeyed": server.pid, "quiet": quiet.pid, "reference": ref.pid}
        pids["fastapi"] = floor.pid
        print(
            f"\n{'route':<36} {'app':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU µs':>7}"
            "   of ref.   targets"
        )
        for route in [route for route in ROUTES if args.only is None or args.only in route.name]:
            apps = [which for which in APPS if which in route.modes]
            for which in apps:
                wrk(ports[which], route.modes[which], 2, args.connections, loads)  # warm-up
            runs: dict[str, list[Run]] = {which: [] for which in apps}
            for _ in range(args.rounds):
                for which in apps:
                    run = wrk(ports[which], route.modes[which], args.seconds, args.connections, loads, pids[which])
                    runs[which].append(run)
            report_route(route, {which: median_run(app_runs) for which, app_runs in runs.items()})
        print(flush=True)
        if args.only is None:
            print_rss(server.pid, ports["service"], args.rss_requests, args.connections, loads)


async def forget_writes(url: str, keep: int) -> None:
    """Leaves the seeded catalog (its first `keep` songs): the songs runs added go, with their keys and records."""
    connection = await asyncpg.connect(url)
    try:
        if await connection.fetchval("SELECT to_regclass('song')") is None:
            return  # not migrated yet
        await connection.execute("DELETE FROM song WHERE id NOT IN (SELECT id FROM song ORDER BY id LIMIT $1)", keep)
        await connection.execute("DELETE FROM idempotency_key")
        await connection.execute("DELETE FROM api_key WHERE name LIKE 'bench-%'")
        # Every run from the same state: no dead rows of the last one in the indexes, fresh statistics.
        await connection.execute("VACUUM ANALYZE song, search_term, idempotency_key, api_key")
    finally:
        await connection.close()


def report_route(route: Route, medians: dict[str, Run]) -> None:
    """One row an app: its medians, its share of the reference's requests/s, and the service's targets."""
    reference = medians["reference"]
    for which, run in medians.items():
        print(
            f"{route.name if which == 'reference' else '':<36} {which:<10} {run.requests_per_second:>8,.0f} "
            f"{run.p50_ms:>8.2f} {run.p99_ms:>8.2f} {run.errors:>7} {run.cpu_us:>7.0f}",
            end="",
        )
        if which == "unkeyed":
            share = medians["service"].requests_per_second / run.requests_per_second
            print(f"          {verdict('keyed/unkeyed', share, KEYED_TARGET, run.errors)}", end="")
        elif which == "quiet":
            share = medians["service"].requests_per_second / run.requests_per_second
            print(f"          {verdict('service/quiet', share, QUIET_TARGET, run.errors)}", end="")
        elif which != "reference":
            print(f"   {run.requests_per_second / reference.requests_per_second:>5.2f}", end="")
            if which == "service":
                print(f"   {'; '.join(service_verdicts(route, medians))}", end="")
        print(flush=True)


def service_verdicts(route: Route, medians: dict[str, Run]) -> list[str]:
    service, floor, reference = medians["service"], medians.get("fastapi"), medians["reference"]
    verdicts = []
    if route.of_floor is not None and floor is not None:
        share = service.requests_per_second / floor.requests_per_second
        verdicts.append(verdict("of the floor", share, route.of_floor, service.errors))
    if route.of_reference is not None:
        share = service.requests_per_second / reference.requests_per_second
        verdicts.append(verdict("of the reference", share, route.of_reference, service.errors))
    if route.p99_of_floor is not None and floor is not None:
        times = service.p99_ms / floor.p99_ms
        met = times <= route.p99_of_floor
        verdicts.append(f"p99 x{times:.2f} the floor's (target <= {route.p99_of_floor}: {'met' if met else 'NOT MET'})")
    return verdicts


def verdict(what: str, share: float, target: float, errors: int) -> str:
    met = share >= target and errors == 0
    return f"{what} {share:.2f} (target {target}: {'met' if met else 'NOT MET'})"


def print_rss(pid: int, port: int, requests: int, connections: int, loads: dict[str, str]) -> None:
    """The worker's RSS after each quarter of `requests` GET /songs/{id}, beyond what the runs above sent."""
    samples = [rss_mb(pid)]
    sent = 0
    while sent < requests:
        run = wrk(port, "get", 5, connections, loads)
        sent += int(run.requests_per_second * 5)
        samples.append(rss_mb(pid))
    quarters = [samples[round(i * (len(samples) - 1) / 4)] for i in range(5)]
    print(
        f"service RSS over {sent:,} more requests: " + " -> ".join(f"{mb:.0f}" for mb in quarters) + " MB"
        f" (target < 150 MB, no growth: {max(samples) - samples[0]:+.1f} MB)"
    )


if __name__ == "__main__":
    main()
