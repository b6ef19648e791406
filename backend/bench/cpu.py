"""CPU time a request of the service and of the framework's floor, in one process: `make bench-cpu`.

    uv run python bench/cpu.py --help     # from backend/

Drives each app as an ASGI callable, without an HTTP server, over the `make
bench` catalog (BENCH_SERVE_DATABASE_URL, seeded by `make bench`), with a few
requests in flight at once, and prints the process's CPU time per request:
what the app and the driver cost, apart from uvicorn and PostgreSQL, so that
small differences show through the noise of a shared machine. `--profile`
prints cProfile's busiest functions of the service's run: where its time
goes beyond the floor's. `post-key` measures the service alone: a create
with a write key and an `Idempotency-Key` against one with the key only
(what the idempotency costs), and profiles the keyed one. `--quiet` runs the
service with the access log and the metrics off, as `make bench`'s "quiet".
`--side first` or `second` runs one side only: under `valgrind
--tool=callgrind`, the instructions it takes, a count that whatever else
runs on the machine does not change (backend/README.md, "Safe writes").
"""

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from serve import DEFAULT_URL, make_key, service_env  # noqa: E402

SEARCHED = ["love", "night", "blue", "heart", "dream", "fire", "rain", "song", "moon", "road"]
IN_FLIGHT = 8


def request(mode: str, number: int, songs: int, key: str = "") -> tuple[dict[str, Any], bytes]:
    """The ASGI scope and body of one request of `mode`, as `bench/wrk/songbook.lua` sends it."""
    method, path, query, body = "GET", "/songs", b"", b""
    if mode == "get":
        path = f"/songs/{random.randint(1, songs)}"
    elif mode == "list":
        query = b"limit=50"
    elif mode == "search":
        query = b"limit=50&q=" + random.choice(SEARCHED).encode()
    else:
        method, body = "POST", json.dumps({"name": f"CPU {time.time_ns()}-{number}", "artist": "A"}).encode()
    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench")]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if mode in ("post-auth", "post-key"):
        headers.append((b"authorization", f"Bearer {key}".encode()))
    if mode == "post-key":
        headers.append((b"idempotency-key", f"cpu-{time.time_ns()}-{number}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    return scope, body


async def call(app: ASGIApp, scope: dict[str, Any], body: bytes) -> int:
    """The status `app` answers the request with."""
    sent = False
    status = 0

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # the client stays: no disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure(
    app: ASGIApp, mode: str, count: int, songs: int, profile: cProfile.Profile | None, key: str = ""
) -> float:
    """CPU µs a request of `mode`, over `count` requests after a warm-up."""

    async def send_all(first: int, total: int) -> None:
        for number in range(first, first + total):
            status = await call(app, *request(mode, number, songs, key))
            if status >= 400:
                raise SystemExit(f"{mode}: answered {status}")

    async with LifespanManager(app):
        await send_all(0, 200)
        started = time.process_time()
        if profile is not None:
            profile.enable()
        share = count // IN_FLIGHT
        await asyncio.gather(*(send_all(1000 + k * share, share) for k in range(IN_FLIGHT)))
        if profile is not None:
            profile.disable()
        return (time.process_time() - started) / (share * IN_FLIGHT) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["get", "list", "search", "post", "post-key"])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two sides")
    parser.add_argument("--songs", type=int, default=100_000, help="songs in the catalog (ids to ask for)")
    parser.add_argument("--profile", action="store_true", help="cProfile the second side's last round")
    parser.add_argument(
        "--side", choices=["first", "second"], help="run one side only (to count its instructions under callgrind)"
    )
    parser.add_argument("--quiet", action="store_true", help="the service with the access log and the metrics off")
    args = parser.parse_args()
    url = os.environ.get("BENCH_SERVE_DATABASE_URL", DEFAULT_URL)
    os.environ.update(service_env(url, quiet=args.quiet) | {"REFERENCE_DSN": url})
    from fastapi_app import app as floor  # it reads REFERENCE_DSN as it is imported

    from app.main import create_app

    key = make_key(url) if args.mode == "post-key" else ""
    profile = cProfile.Profile() if args.profile else None
    # The service's logs go to a file, as a container's do: written, not shown.
    with tempfile.TemporaryFile("w") as log, contextlib.redirect_stderr(log):
        service = create_app()
        # The two sides of each round: (name, app, mode); post-key is the service against itself.
        sides: list[tuple[str, ASGIApp, str]] = (
            [("key only", service, "post-auth"), ("keyed", service, "post-key")]
            if args.mode == "post-key"
            else [("floor", floor, args.mode), ("quiet" if args.quiet else "service", service, args.mode)]
        )
        if args.side is not None:
            sides = [sides[0] if args.side == "first" else sides[1]]
        results: dict[str, list[float]] = {name: [] for name, _, _ in sides}
        for round_ in range(args.rounds):
            for name, app, mode in sides:
                used = profile if round_ == args.rounds - 1 and name == sides[-1][0] else None
                results[name].append(asyncio.run(measure(app, mode, args.requests, args.songs, used, key)))
    medians = [(name, sorted(runs)[len(runs) // 2]) for name, runs in results.items()]
    if len(medians) == 1:
        print(f"{args.mode}: {medians[0][0]} {medians[0][1]:.0f} µs CPU a request")
    else:
        (base_name, base_us), (name, us) = medians
        print(f"{args.mode}: {base_name} {base_us:.0f} µs CPU a request, {name} {us:.0f} µs ({us / base_us:.2f}x)")
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
