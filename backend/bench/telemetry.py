"""What each piece of the request telemetry costs, in µs a request: `make bench-telemetry`.

    uv run python bench/telemetry.py --help     # from backend/

Calls `RequestTelemetry` in this process around an ASGI app that answers at
once, so that nothing but the middleware is timed: without it, then with
request ids only, with the metrics, with the access log (JSON lines to a
file, as the container's go to its log), and with everything. Rounds
alternate the variants; the medians are printed, each less the bare app's.
HTTP load (`make bench`) gives the same cost as a share of a real request.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.telemetry import RequestTelemetry

Call = Callable[[], Awaitable[None]]


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    scope["route"] = ROUTE
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"id":1,"name":"Yesterday","artist":"The Beatles"}'})


class _Route:
    path = "/songs/{song_id}"


ROUTE = _Route()


def caller(app: ASGIApp) -> Call:
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    async def call() -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/songs/42",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
        }
        await app(scope, receive, send)

    return call


async def per_request(call: Call, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        await call()
    return (time.perf_counter() - started) / requests * 1e6


async def measure(requests: int, rounds: int, log: TextIO) -> dict[str, float]:
    access_log = logs.AccessLog("info", "json", log)
    variants = {
        "bare app": caller(answer),
        "request id": caller(RequestTelemetry(answer, access_log=None, metrics=False)),
        "request id + metrics": caller(RequestTelemetry(answer, access_log=None, metrics=True)),
        "request id + access log": caller(RequestTelemetry(answer, access_log=access_log, metrics=False)),
        "all on": caller(RequestTelemetry(answer, access_log=access_log, metrics=True)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            times[name].append(await per_request(call, requests))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="a variant, a round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryFile("w") as log:  # where the access log writes
        medians = asyncio.run(measure(args.requests, args.rounds, log))
    bare = medians["bare app"]
    print(f"{'variant':<26} {'µs a request':>13} {'added':>7}")
    for name, micros in medians.items():
        print(f"{name:<26} {micros:>13.1f} {micros - bare:>+7.1f}")


if __name__ == "__main__":
    main()
