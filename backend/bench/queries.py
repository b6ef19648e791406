"""Query latency at a million songs, through the HTTP API, on PostgreSQL and SQLite.

    make bench-queries                      # from the repository root
    uv run python bench/queries.py --help   # from backend/

For each database it makes sure the bench catalog holds --count songs (seeding
it with `songbook seed` if not), starts `songbook serve` on it, and times each
query from a client on the same machine over keep-alive HTTP: --requests
requests after a warm-up, reported as median and p99 in milliseconds.
"""

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

BACKEND = Path(__file__).resolve().parent.parent
SONGBOOK = str(Path(sys.executable).parent / "songbook")
sys.path.insert(0, str(BACKEND))

from app.config import async_url  # noqa: E402
from app.paging import encode_cursor  # noqa: E402

TYPOS = [
    "beatels",
    "beyonse",
    "yesterdy",
    "lonley hart",
    "electrik dream",
    "sigur ros",
    "bjork",
    "qeen",
    "midnite train",
    "motorhed",
    "celine dion",
    "guns n roses",
    "daft punc",
    "radiohed",
    "nina simon",
]


def scenarios(max_id: int) -> dict[str, Iterator[str]]:
    """Each query of the benchmark: a stream of URLs, varied where a fixed one would only hit a cache."""
    rng = random.Random(7)

    def forever(make: Callable[[], str]) -> Iterator[str]:
        while True:
            yield make()

    deep = max_id - 1000
    return {
        "first page": forever(lambda: "/songs?limit=50"),
        "page 1M deep (cursor)": forever(
            lambda: f"/songs?limit=50&cursor={encode_cursor('id', [deep - rng.randrange(1000)])}"
        ),
        "one artist (filter)": forever(
            lambda: f"/songs?limit=50&artist={quote(rng.choice(['The Beatles', 'Queen', 'Björk', 'Radiohead']))}"
        ),
        "sort=-year": forever(lambda: "/songs?limit=50&sort=-year"),
        "search with a typo (q)": forever(lambda: f"/songs?limit=50&q={quote(rng.choice(TYPOS))}"),
    }


async def song_count(url: str) -> tuple[int, int]:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as connection:
            row = (await connection.execute(text("SELECT count(*), coalesce(max(id), 0) FROM song"))).one()
            return int(row[0]), int(row[1])
    finally:
        await engine.dispose()


async def create_database(url: str) -> None:
    target = async_url(url)
    engine = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            exists = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            )
            if not exists:
                await connection.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        await engine.dispose()


def songbook(*args: str, url: str) -> None:
    subprocess.run([SONGBOOK, *args], cwd=BACKEND, env=env_for(url), check=True)


def env_for(url: str) -> dict[str, str]:
    # The benchmark's client sends no key, and many requests a second: no per-address limit.
    limits = {"SONGBOOK_ANONYMOUS_RATE_LIMIT_PER_SECOND": "0"}
    return {**os.environ, "DATABASE_URL": url, "SONGBOOK_LOG_LEVEL": "warning", **limits}


def prepare(url: str, count: int) -> int:
    """The bench catalog at `url`, with exactly `count` songs; its largest id."""
    if url.startswith("postgres"):
        asyncio.run(create_database(url))
    songbook("migrate", url=url)
    songs, max_id = asyncio.run(song_count(url))
    if songs != count:
        print(f"  seeding {count:,} songs (the catalog has {songs:,})", flush=True)
        if songs:
            raise SystemExit(f"the bench catalog {url} holds other songs: empty it (or drop it) first")
        songbook("seed", "--count", str(count), url=url)
        songs, max_id = asyncio.run(song_count(url))
    return max_id


@contextmanager
def serve(url: str) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([SONGBOOK, "serve", "--port", str(port)], cwd=BACKEND, env=env_for(url))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the service did not become ready")
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def measure(base: str, urls: Iterator[str], requests: int) -> list[float]:
    with httpx.Client(base_url=base) as client:
        for _ in range(20):
            client.get(next(urls)).raise_for_status()
        times = []
        for _ in range(requests):
            url = next(urls)
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return times


def page_against_api(base: str, requests: int) -> tuple[list[float], list[float]]:
    """The web page's search results (the part its script asks for as a person types) and the same
    `GET /songs?q=` as JSON: the same words, taken in turns so that both see the same machine."""
    rng = random.Random(11)
    page: list[float] = []
    api: list[float] = []
    with httpx.Client(base_url=base) as client:
        for turn in range(20 + requests):
            q = quote(rng.choice(TYPOS))
            for times, url, headers in (
                (api, f"/songs?limit=50&q={q}", {}),
                (page, f"/?limit=50&q={q}", {"X-Songbook-Fragment": "results"}),
            ):
                started = time.perf_counter()
                response = client.get(url, headers=headers)
                if turn >= 20:  # the first are a warm-up
                    times.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
    return page, api


AS_YOU_TYPE = ["beatles", "radiohead", "yesterday"]
PREFIX_TARGET_MS = 15.0


def as_you_type(base: str, requests: int) -> dict[str, list[float]]:
    """Each prefix of a few words (b, be, bea, ... beatles), as a search box sends them while a person types."""
    prefixes = [word[:end] for word in AS_YOU_TYPE for end in range(1, len(word) + 1)]
    times: dict[str, list[float]] = {prefix: [] for prefix in prefixes}
    with httpx.Client(base_url=base) as client:
        for turn in range(5 + requests // 10):
            for prefix in prefixes:
                started = time.perf_counter()
                client.get(f"/songs?limit=50&q={prefix}").raise_for_status()
                if turn >= 5:
                    times[prefix].append((time.perf_counter() - started) * 1000)
    return times


def p99(times: list[float]) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="songs in the bench catalog")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per query")
    parser.add_argument(
        "--postgres", default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/songbook_bench")
    )
    parser.add_argument("--sqlite", default=f"sqlite:///{BACKEND / 'data' / 'bench.db'}")
    parser.add_argument("--only", choices=["postgres", "sqlite"], help="one database only")
    args = parser.parse_args()

    databases = {"PostgreSQL": args.postgres, "SQLite": args.sqlite}
    if args.only:
        databases = {name: url for name, url in databases.items() if name.lower().startswith(args.only[:6])}
    for name, url in databases.items():
        print(f"{name}: {args.count:,} songs", flush=True)
        max_id = prepare(url, args.count)
        with serve(url) as base:
            print(f"  {'query':<26}{'median ms':>10}{'p99 ms':>10}")
            for label, urls in scenarios(max_id).items():
                times = measure(base, urls, args.requests)
                print(f"  {label:<26}{statistics.median(times):>10.2f}{p99(times):>10.2f}", flush=True)
            typed = as_you_type(base, args.requests)
            slowest = max(typed, key=lambda prefix: statistics.median(typed[prefix]))
            print(
                "  as you type, each prefix of "
                + ", ".join(AS_YOU_TYPE)
                + ": "
                + ", ".join(f"{prefix} {statistics.median(times):.1f}" for prefix, times in typed.items())
            )
            worst = statistics.median(typed[slowest])
            verdict = "met" if worst <= PREFIX_TARGET_MS else "NOT MET"
            target = f"target at most {PREFIX_TARGET_MS:.0f} ms: {verdict}"
            print(f"  the slowest prefix, {slowest!r}: p50 {worst:.2f} ms ({target})")
            page, api = page_against_api(base, args.requests)
            print(f"  {'search, the page (html)':<26}{statistics.median(page):>10.2f}{p99(page):>10.2f}")
            print(f"  {'search, the API (json)':<26}{statistics.median(api):>10.2f}{p99(api):>10.2f}")
            ratio = statistics.median(page) / statistics.median(api)
            print(f"  the page's search / the API's, p50: {ratio:.2f}x (target: at most 2x)", flush=True)


if __name__ == "__main__":
    main()
