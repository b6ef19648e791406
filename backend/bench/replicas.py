"""Reads with one streaming replica against none, the replica's lag under a burst of writes, the stale-read window.

    uv run python bench/replicas.py --help     # from backend/, as root (PostgreSQL runs as `postgres`)

It makes a PostgreSQL of its own (initdb into a temporary folder, as the
tests' `cluster` fixture does), seeds --count songs, makes a streaming replica
of it (`pg_basebackup -R`, another port), and starts `songbook serve` twice,
one worker each, as the image ships it: without replicas ("primary only"),
and with the replica in SONGBOOK_READ_REPLICA_URLS ("with replica"); and a
third whose SONGBOOK_READ_REPLICA_URLS names the primary itself ("routing
only": not a standby, it is left out and every read goes to the primary),
which shows what choosing costs the service apart from where reads go. Then:

1. Throughput: wrk on GET /songs/{id}, pages of 50 and searches, the three
   servers alternating --rounds times; the median requests/s of each, and
   the service's CPU time a request (from /proc, around each run): a
   steadier measure than requests/s on a shared machine.
2. Lag under a burst of writes: wrk creates songs for --burst seconds through
   the server with the replica, while what its poller sees (the
   `songbook_replica_lag_seconds` and `_bytes` gauges, from /metrics) and
   PostgreSQL's own measure (`replay_lag` in the primary's
   pg_stat_replication) are sampled every 100 ms.
3. The stale-read window: --writes times, a song is created and then read
   back without the token, again and again until found. The window of one
   write is how long after its answer the last read that missed it began (0
   when the first read found it). Idle, then during a burst of writes.

Everything shares this machine's cores: the service, wrk, the primary and the replica.
"""

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import httpx
from queries import prepare
from serve import BACKEND, WRK_SCRIPT, Run, free_port, median_run, running, service, service_env, wrk

sys.path.insert(0, str(BACKEND))  # the tests' own PostgreSQL clusters

from tests.pgcluster import make_replica, own_cluster

ROUTES = {"GET /songs/{id}": "get", "GET /songs?limit=50": "list", "GET /songs?q=...": "search"}
READS = re.compile(r'^songbook_replica_reads_total\{replica="[^"]+"\} (\S+)$', re.MULTILINE)
GAUGE = re.compile(r'^(songbook_replica_lag_(?:seconds|bytes))\{replica="[^"]+"\} (\S+)$', re.MULTILINE)
SAMPLE_SECONDS = 0.1
BURST_CONNECTIONS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="songs in the catalog")
    parser.add_argument("--seconds", type=int, default=8, help="of load per route, server and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--burst", type=int, default=10, help="seconds of creates while the lag is sampled")
    parser.add_argument("--writes", type=int, default=200, help="writes read back, for the stale-read window")
    parser.add_argument("--max-lag-ms", type=int, default=1000, help="SONGBOOK_REPLICA_MAX_LAG_MS")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: install it (Debian: apt-get install wrk)")
    if os.geteuid() != 0:
        raise SystemExit("run it as root: the primary and the replica run as the postgres user")
    with own_cluster() as primary:
        print(f"catalog: {args.count:,} songs", flush=True)
        max_id = prepare(primary.url, args.count)
        started = time.perf_counter()
        replica = make_replica(primary)
        print(f"replica made and started in {time.perf_counter() - started:.1f} s (pg_basebackup -R)", flush=True)
        try:
            measure(args, primary.url, replica.url, max_id)
        finally:
            replica.ctl("-m", "immediate", "stop")


def measure(args: argparse.Namespace, primary: str, replica: str, max_id: int) -> None:
    plain, replicated, routing = free_port(), free_port(), free_port()
    lag = {"SONGBOOK_REPLICA_MAX_LAG_MS": str(args.max_lag_ms)}
    with_replica = service_env(primary) | lag | {"SONGBOOK_READ_REPLICA_URLS": replica}
    routing_only = service_env(primary) | lag | {"SONGBOOK_READ_REPLICA_URLS": primary}
    loads = {"SONGS_N": str(max_id)}
    with (
        running(service(plain), service_env(primary), "/readyz", plain) as plain_server,
        running(service(replicated), with_replica, "/readyz", replicated) as replicated_server,
        running(service(routing), routing_only, "/readyz", routing) as routing_server,
    ):
        servers = {
            "primary only": (plain, plain_server.pid),
            "with replica": (replicated, replicated_server.pid),
            "routing only": (routing, routing_server.pid),
        }
        print(
            f"\n{'route':<22} {'server':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   ratio"
            "   service CPU µs/request"
        )
        for route, mode in ROUTES.items():
            throughput(args, route, mode, servers, loads)
        base_url = f"http://127.0.0.1:{replicated}"
        asyncio.run(lag_under_burst(base_url, primary, args.burst))
        asyncio.run(stale_read_window(base_url, args.writes, burst=False))
        asyncio.run(stale_read_window(base_url, args.writes, burst=True))


def throughput(
    args: argparse.Namespace, route: str, mode: str, servers: dict[str, tuple[int, int]], loads: dict[str, str]
) -> None:
    """The servers in turn, --rounds times: median requests/s, latency, and the service's CPU time a request."""
    for port, _ in servers.values():
        wrk(port, mode, 2, args.connections, loads)  # warm-up
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    replicated = servers["with replica"][0]
    before = replica_reads(replicated)
    for _ in range(args.rounds):
        for name, (port, pid) in servers.items():
            started = cpu_seconds(pid)
            run = wrk(port, mode, args.seconds, args.connections, loads)
            runs[name].append(run)
            cpu[name].append((cpu_seconds(pid) - started) / (run.requests_per_second * args.seconds) * 1e6)
    answered = replica_reads(replicated) - before
    served = sum(run.requests_per_second * args.seconds for run in runs["with replica"])
    medians = {name: median_run(server_runs) for name, server_runs in runs.items()}
    base = medians["primary only"].requests_per_second
    for name, run in medians.items():
        print(
            f"{route if name == 'primary only' else '':<22} {name:<14} {run.requests_per_second:>8,.0f} "
            f"{run.p50_ms:>8.2f} {run.p99_ms:>8.2f} {run.errors:>7}   {run.requests_per_second / base:.2f}"
            f"   {statistics.median(cpu[name]):>6.0f}",
            flush=True,
        )
    print(f"{'':<22} the replica answered {answered:,.0f} reads of about {served:,.0f} requests", flush=True)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def burst_of_creates(base_url: str, seconds: int, *, report: bool) -> asyncio.subprocess.Process:
    """wrk creating songs for `seconds`; its report on its standard output if `report`."""
    command = ["wrk", "-t1", f"-c{BURST_CONNECTIONS}", f"-d{seconds}s", "-s", str(WRK_SCRIPT), base_url]
    output = asyncio.subprocess.PIPE if report else asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(*command, env={**os.environ, "BENCH_MODE": "post"}, stdout=output)


async def lag_under_burst(base_url: str, primary: str, seconds: int) -> None:
    """The poller's view of the lag, and PostgreSQL's, sampled while wrk creates songs."""
    seen: dict[str, list[float]] = {"songbook_replica_lag_seconds": [], "songbook_replica_lag_bytes": []}
    replay_lag: list[float] = []
    connection = await asyncpg.connect(primary)
    async with httpx.AsyncClient(base_url=base_url) as client:
        burst = asyncio.create_task((await burst_of_creates(base_url, seconds, report=True)).communicate())
        while not burst.done():
            for name, value in GAUGE.findall((await client.get("/metrics")).text):
                if value != "NaN":
                    seen[name].append(float(value))
            lag = await connection.fetchval("SELECT extract(epoch FROM replay_lag) FROM pg_stat_replication")
            if lag is not None:
                replay_lag.append(float(lag))
            await asyncio.sleep(SAMPLE_SECONDS)
        report = (await burst)[0].decode()
    await connection.close()
    print(f"\nlag during {seconds} s of creates ({BURST_CONNECTIONS} connections; wrk: {report.strip()[-120:]})")
    print(f"  {'measure':<52} {'samples':>7} {'median':>9} {'p99':>9} {'max':>9}")
    describe("poller: staleness bound (ms)", [s * 1000 for s in seen["songbook_replica_lag_seconds"]])
    describe("poller: bytes behind (kB)", [b / 1000 for b in seen["songbook_replica_lag_bytes"]])
    describe("PostgreSQL: pg_stat_replication.replay_lag (ms)", [s * 1000 for s in replay_lag])


async def stale_read_window(base_url: str, writes: int, *, burst: bool) -> None:
    """How long after a write's answer a read without its token may still miss it."""
    windows: list[float] = []
    missed_at_once = 0
    before = replica_reads(int(base_url.rsplit(":", 1)[1]))
    async with httpx.AsyncClient(base_url=base_url) as client:
        load = await burst_of_creates(base_url, 3600, report=False) if burst else None
        try:
            for number in range(writes):
                created = await client.post("/songs", json={"name": f"Window {time.time_ns()}-{number}", "artist": "W"})
                assert created.status_code == 201, created.text
                client.cookies.clear()  # the read-after token's cookie: these reads go without it
                answered = time.monotonic()
                last_miss = None
                while True:
                    asked = time.monotonic()
                    read = await client.get(created.headers["Location"])
                    if read.status_code == 200:
                        break
                    assert read.status_code == 404, read.text
                    last_miss = asked
                missed_at_once += last_miss is not None
                windows.append(0.0 if last_miss is None else (last_miss - answered) * 1000)
        finally:
            if load is not None:
                load.terminate()
                await load.wait()
    answered = replica_reads(int(base_url.rsplit(":", 1)[1])) - before
    when = f"during creates ({BURST_CONNECTIONS} connections)" if burst else "idle"
    print(f"\nstale-read window, {when}: {missed_at_once} of {writes} first reads missed the write")
    print(f"  reads answered by the replica: {answered:,.0f} (of {writes} writes' reads, the misses included)")
    describe("window (ms)", windows)


def replica_reads(port: int) -> float:
    """What the server's `songbook_replica_reads_total` counts so far."""
    return sum(float(value) for value in READS.findall(httpx.get(f"http://127.0.0.1:{port}/metrics").text))


def describe(what: str, values: list[float]) -> None:
    if not values:
        print(f"  {what:<52} {0:>7} {'-':>9} {'-':>9} {'-':>9}")
        return
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"  {what:<52} {len(values):>7} {statistics.median(values):>9.1f} {p99:>9.1f} {max(values):>9.1f}")


if __name__ == "__main__":
    main()
