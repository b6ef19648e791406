"""Bulk import and export of a million songs, on PostgreSQL and SQLite.

    make bench-transfer                      # from the repository root
    uv run python bench/transfer.py --help   # from backend/

Makes a CSV of --count synthetic songs once (kept in data/), then on each
database, into a new, empty, migrated catalog:

- PostgreSQL only: `psql -c "\\copy"` of the same file into a bare table of
  the same columns (name, artist, year), the median of --copies runs: the
  ceiling that any importer of this file into this server is measured against;
- `songbook import FILE`: rows per second over the whole command's wall-clock
  time, and the command's peak resident memory (RSS);
- `songbook export` of the imported catalog to CSV and to NDJSON: rows per
  second and peak RSS.
"""

import argparse
import asyncio
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

BACKEND = Path(__file__).resolve().parent.parent
DATA = BACKEND / "data"
SONGBOOK = str(Path(sys.executable).parent / "songbook")
sys.path.insert(0, str(BACKEND))

from app.config import async_url  # noqa: E402
from app.seed import generate_songs  # noqa: E402


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float


def run(command: list[str], *, url: str) -> Run:
    """Runs `command` to its end; its wall-clock time and peak RSS.

    The peak is the kernel's high-water mark (VmHWM) of the process, read
    every 50 ms: the rusage of a child counts the memory of this process,
    which it was forked from, and this one holds the whole CSV generator's.
    """
    env = {**os.environ, "DATABASE_URL": url}
    started = time.perf_counter()
    peak_kib = 0
    with subprocess.Popen(command, cwd=BACKEND, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        while process.poll() is None:
            peak_kib = max(peak_kib, _high_water_kib(process.pid))
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    return Run(elapsed, peak_kib / 1024)


def _high_water_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it has just ended
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def make_csv(count: int) -> Path:
    path = DATA / f"bench-songs-{count}.csv"
    if not path.exists():
        print(f"making {path.name} ({count:,} songs)", flush=True)
        DATA.mkdir(exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["name", "artist", "year"])
            for song in generate_songs(count, seed=11):
                writer.writerow([song["name"], song["artist"], "" if song["year"] is None else song["year"]])
        partial.replace(path)
    return path


async def recreate_database(url: str) -> None:
    target = async_url(url)
    engine = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        await engine.dispose()


def psql_copy(url: str, path: Path, runs: int) -> float | None:
    """The median seconds of `\\copy` of the file into a bare table, or None without psql."""
    psql = shutil.which("psql")
    if psql is None:
        print("  psql is not installed: no \\copy ceiling", flush=True)
        return None
    libpq_url = async_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    times = []
    for _ in range(runs):
        setup = "DROP TABLE IF EXISTS bare_copy; CREATE TABLE bare_copy (name text, artist text, year integer)"
        subprocess.run([psql, "-q", "-X", "-d", libpq_url, "-c", setup], check=True)
        copy = f"\\copy bare_copy FROM '{path}' WITH (FORMAT csv, HEADER)"
        times.append(run([psql, "-q", "-X", "-d", libpq_url, "-c", copy], url=url).seconds)
    subprocess.run([psql, "-q", "-X", "-d", libpq_url, "-c", "DROP TABLE bare_copy"], check=True)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="songs in the file")
    parser.add_argument("--copies", type=int, default=3, help="runs of psql's \\copy, for its median")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_TRANSFER_DATABASE_URL", "postgresql://postgres@127.0.0.1/songbook_transfer"),
        help="a PostgreSQL database to drop and create",
    )
    parser.add_argument("--sqlite", default=f"sqlite:///{DATA / 'bench-transfer.db'}")
    parser.add_argument("--only", choices=["postgres", "sqlite"], help="one database only")
    args = parser.parse_args()

    path = make_csv(args.count)
    databases = {"PostgreSQL": args.postgres, "SQLite": args.sqlite}
    if args.only:
        databases = {name: url for name, url in databases.items() if name.lower().startswith(args.only[:6])}
    for name, url in databases.items():
        print(f"{name}: {args.count:,} songs from {path.name} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
        if name == "PostgreSQL":
            asyncio.run(recreate_database(url))
            copy_seconds = psql_copy(url, path, args.copies)
        else:
            Path(async_url(url).database or "").unlink(missing_ok=True)
            copy_seconds = None
        run([SONGBOOK, "migrate"], url=url)
        imported = run([SONGBOOK, "import", str(path)], url=url)
        print(f"  {'what':<28}{'rows/s':>10}{'seconds':>9}{'peak RSS MB':>13}", flush=True)
        if copy_seconds is not None:
            label = "psql \\copy, bare table"
            print(f"  {label:<28}{args.count / copy_seconds:>10,.0f}{copy_seconds:>9.1f}", flush=True)
        print(
            f"  {'songbook import':<28}{args.count / imported.seconds:>10,.0f}{imported.seconds:>9.1f}"
            f"{imported.peak_rss_mb:>13.0f}",
            flush=True,
        )
        for file_format in ("csv", "ndjson"):
            output = DATA / f"bench-export.{file_format}"
            exported = run([SONGBOOK, "export", "--output", str(output)], url=url)
            output.unlink()
            print(
                f"  {'songbook export (' + file_format + ')':<28}{args.count / exported.seconds:>10,.0f}"
                f"{exported.seconds:>9.1f}{exported.peak_rss_mb:>13.0f}",
                flush=True,
            )
        if copy_seconds is not None:
            print(f"  import / \\copy: {copy_seconds / imported.seconds:.2f}", flush=True)


if __name__ == "__main__":
    main()
