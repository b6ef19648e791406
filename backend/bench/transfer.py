"""Bulk import and export of a million songs, on PostgreSQL and SQLite.

    make bench-transfer                      # from the repository root
    uv run python bench/transfer.py --help   # from backend/

Makes two CSVs of --count synthetic songs once (kept in data/; different
seeds, so different songs), then on each database, into a new, empty, migrated
catalog:

- PostgreSQL only: `psql -c "\\copy"` of the first file into a bare table of
  the same columns (name, artist, year), the median of --copies runs: the
  ceiling that any importer of this file into this server is measured against;
- PostgreSQL only: psql's own `INSERT INTO song ... SELECT ... FROM staging`
  of the songs the import below added into the same empty catalog (a copy
  made before the import), once keeping the indexes row by row, once dropping
  the secondary ones first and building them after in its transaction: what
  PostgreSQL itself reaches into this schema on this machine;
- `songbook import FIRST`, into the empty catalog: rows per second over the
  whole command's wall-clock time (target 50,000), the command's peak resident
  memory (RSS), and the peak of its and its worker process's proportional
  memory (PSS) together (target under 200 MB);
- `songbook export` of the imported catalog to CSV and to NDJSON: rows per
  second and peak memory;
- PostgreSQL only: `songbook import SECOND` into the catalog that now holds the
  first file's songs, beside psql's own `INSERT INTO song ... SELECT ... FROM
  staging` of the same new songs into a copy of the same catalog (made before
  the import; the staging table is filled, untimed, with the songs the
  import added): the import's share of psql's rate (target 0.8).

During each import a `songbook serve` on the same database answers `GET
/songs/{id}` for random ids of the first file (--readers requests a second,
one at a time): their p50, p99 and longest time, and their statuses.
"""

import argparse
import asyncio
import csv
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

BACKEND = Path(__file__).resolve().parent.parent
DATA = BACKEND / "data"
SONGBOOK = str(Path(sys.executable).parent / "songbook")
sys.path.insert(0, str(BACKEND))

from serve import free_port, running, service, service_env  # noqa: E402

from app.config import async_url  # noqa: E402
from app.seed import generate_songs  # noqa: E402

SECOND_SEED = 12


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float  # the command's own high-water mark
    peak_pss_mb: float  # the command's and its children's (an import's worker) together, shared pages split


def run(command: list[str], *, url: str) -> Run:
    """Runs `command` to its end; its wall-clock time and peak memory.

    Read every 50 ms: the kernel's high-water mark (VmHWM) of the process (the
    rusage of a child counts the memory of this process, which it was forked
    from, and this one holds the whole CSV generator's); and the largest sum,
    over the process and its children, of their proportional set sizes (PSS:
    the libraries an import's worker loads again are counted once, not twice).
    """
    env = {**os.environ, "DATABASE_URL": url}
    started = time.perf_counter()
    peak_rss = peak_pss = 0
    with subprocess.Popen(command, cwd=BACKEND, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        while process.poll() is None:
            peak_rss = max(peak_rss, _kib(process.pid, "status", "VmHWM:"))
            peak_pss = max(peak_pss, sum(_kib(pid, "smaps_rollup", "Pss:") for pid in _tree(process.pid)))
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    return Run(elapsed, peak_rss / 1024, peak_pss / 1024)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # it has just ended
        return [pid]
    return [pid, *(descendant for child in children for descendant in _tree(int(child)))]


def _kib(pid: int, file: str, field: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/{file}").read_text().splitlines()
    except OSError:  # it has just ended
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(field)), 0)


@dataclass
class Reads:
    """What readers saw: the seconds of each GET /songs/{id}, and the statuses."""

    seconds: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def __str__(self) -> str:
        if not self.seconds:
            return "no reads"
        ms = sorted(second * 1000 for second in self.seconds)
        p50, p99 = ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        statuses = ", ".join(f"{count} x {status}" for status, count in sorted(self.statuses.items()))
        return f"{len(ms):,} reads: p50 {p50:.1f} ms, p99 {p99:.1f} ms, longest {ms[-1]:.0f} ms ({statuses})"


@contextmanager
def readers(url: str, ids: int, per_second: int) -> Iterator[Reads]:
    """A `songbook serve` on `url`, asked for songs with random ids up to `ids`, one at a time, meanwhile."""
    port = free_port()
    reads, stop = Reads(), threading.Event()

    def read() -> None:
        rng = random.Random(7)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            while not stop.wait(1 / per_second):
                started = time.perf_counter()
                try:
                    status = client.get(f"/songs/{rng.randint(1, ids)}").status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all
                reads.seconds.append(time.perf_counter() - started)
                reads.statuses[status] += 1

    with running(service(port), service_env(url, quiet=True), "/readyz", port):
        thread = threading.Thread(target=read)
        thread.start()
        try:
            yield reads
        finally:
            stop.set()
            thread.join()


def make_csv(count: int, seed: int = 11) -> Path:
    path = DATA / (f"bench-songs-{count}.csv" if seed == 11 else f"bench-songs-{count}-seed-{seed}.csv")
    if not path.exists():
        print(f"making {path.name} ({count:,} songs)", flush=True)
        DATA.mkdir(exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["name", "artist", "year"])
            for song in generate_songs(count, seed=seed):
                writer.writerow([song["name"], song["artist"], "" if song["year"] is None else song["year"]])
        partial.replace(path)
    return path


async def recreate_database(url: str, template: str | None = None) -> None:
    """Drops the database of `url` and makes it again: empty, or a copy of database `template`."""
    target = async_url(url)
    engine = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{template}"' if template else ""
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{target.database}"{copy}'))
    finally:
        await engine.dispose()


async def _drop_database(url: str) -> None:
    target = async_url(url)
    engine = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        await engine.dispose()


def libpq(url: str) -> str:
    return async_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def psql_insert(url: str, catalog_url: str, first_new_id: int, *, rebuild: bool = False) -> tuple[int, float]:
    """psql's own insert into a copy of the catalog, from a staging table: rows and seconds.

    The staging table holds, untimed, the songs `songbook import` added to the
    catalog of `catalog_url` (ids from `first_new_id`), with their derived columns.
    With `rebuild`, the insert drops the secondary indexes first and builds them
    after, in its transaction: what PostgreSQL reaches when it need not keep them
    row by row (and readers of the table wait for it meanwhile).
    """
    psql = shutil.which("psql") or "psql"
    staged = DATA / "bench-staging.csv"
    columns = "name, artist, year, name_key, artist_key, name_search, artist_search"
    select = f"SELECT {columns} FROM song WHERE id >= {first_new_id} ORDER BY id"
    subprocess.run(
        [psql, "-q", "-X", "-d", libpq(catalog_url), "-c", f"\\copy ({select}) TO '{staged}' CSV"], check=True
    )
    setup = (
        'CREATE TABLE staging (name text, artist text, year integer, name_key text COLLATE "C", '
        'artist_key text COLLATE "C", name_search text, artist_search text)'
    )
    subprocess.run([psql, "-q", "-X", "-d", libpq(url), "-c", setup], check=True)
    load = f"\\copy staging FROM '{staged}' CSV"
    subprocess.run([psql, "-q", "-X", "-d", libpq(url), "-c", load, "-c", "ANALYZE staging"], check=True)
    rows = sum(1 for _ in staged.open())
    staged.unlink()
    insert = f"INSERT INTO song ({columns}) SELECT {columns} FROM staging ON CONFLICT (name_key, artist_key) DO NOTHING"
    if not rebuild:
        return rows, run([psql, "-q", "-X", "-d", libpq(url), "-c", insert], url=url).seconds
    drop, build = _secondary_indexes(psql, url)
    # Without the unique index ON CONFLICT has nothing to check against: the staged songs are all new.
    insert = f"INSERT INTO song ({columns}) SELECT {columns} FROM staging"
    script = ["BEGIN", *drop, insert, *build, "COMMIT"]
    return rows, run(
        [psql, "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", libpq(url), "-c", "; ".join(script)], url=url
    ).seconds


def _secondary_indexes(psql: str, url: str) -> tuple[list[str], list[str]]:
    """The statements that drop the song table's indexes but its primary key, and those that build them again."""
    query = (
        "SELECT coalesce(con.conname, ''), index.indexname, index.indexdef, "
        "coalesce(pg_get_constraintdef(con.oid), '') FROM pg_indexes AS index "
        "LEFT JOIN pg_constraint AS con ON con.conname = index.indexname AND con.contype = 'u' "
        "WHERE index.tablename = 'song' AND index.indexname <> 'pk_song'"
    )
    listed = subprocess.run(
        [psql, "-q", "-X", "-A", "-t", "-F", "\t", "-d", libpq(url), "-c", query],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    drop, build = [], []
    for line in listed.splitlines():
        constraint, index, index_definition, constraint_definition = line.split("\t")
        if constraint:
            drop.append(f"ALTER TABLE song DROP CONSTRAINT {constraint}")
            build.append(f"ALTER TABLE song ADD CONSTRAINT {constraint} {constraint_definition}")
        else:
            drop.append(f"DROP INDEX {index}")
            build.append(index_definition)
    return drop, build


def psql_copy(url: str, path: Path, runs: int) -> float | None:
    """The median seconds of `\\copy` of the file into a bare table, or None without psql."""
    psql = shutil.which("psql")
    if psql is None:
        print("  psql is not installed: no \\copy ceiling", flush=True)
        return None
    libpq_url = libpq(url)
    times = []
    for _ in range(runs):
        setup = "DROP TABLE IF EXISTS bare_copy; CREATE TABLE bare_copy (name text, artist text, year integer)"
        subprocess.run([psql, "-q", "-X", "-d", libpq_url, "-c", setup], check=True)
        copy = f"\\copy bare_copy FROM '{path}' WITH (FORMAT csv, HEADER)"
        times.append(run([psql, "-q", "-X", "-d", libpq_url, "-c", copy], url=url).seconds)
    subprocess.run([psql, "-q", "-X", "-d", libpq_url, "-c", "DROP TABLE bare_copy"], check=True)
    return statistics.median(times)


def compile_bytecode() -> None:
    """Compiles the app and its libraries once, as the container image does (UV_COMPILE_BYTECODE).

    Without it, where PYTHONDONTWRITEBYTECODE is set, each command (and an
    import's worker) compiles every module it loads anew: seconds of each run.
    """
    paths = [str(BACKEND / "app"), sysconfig.get_paths()["purelib"]]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", *paths], check=True, stdout=subprocess.DEVNULL)


def row(what: str, rows: int, result: Run | float, target: str = "") -> None:
    seconds = result.seconds if isinstance(result, Run) else result
    rss = f"{result.peak_rss_mb:>10.0f}{result.peak_pss_mb:>10.0f}" if isinstance(result, Run) else f"{'':>20}"
    print(f"  {what:<34}{rows / seconds:>10,.0f}{seconds:>9.1f}{rss}   {target}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="songs in each file")
    parser.add_argument("--copies", type=int, default=3, help="runs of psql's \\copy, for its median")
    parser.add_argument("--readers", type=int, default=50, help="GET /songs/{id} a second during the imports")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_TRANSFER_DATABASE_URL", "postgresql://postgres@127.0.0.1/songbook_transfer"),
        help="a PostgreSQL database to drop and create (and one named after it, with _reference)",
    )
    parser.add_argument("--sqlite", default=f"sqlite:///{DATA / 'bench-transfer.db'}")
    parser.add_argument("--only", choices=["postgres", "sqlite"], help="one database only")
    args = parser.parse_args()

    compile_bytecode()
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
        empty = None
        if name == "PostgreSQL":  # the empty, migrated catalog, for psql's own inserts below
            empty = str(async_url(url).set(database=f"{async_url(url).database}_reference"))
            asyncio.run(recreate_database(empty, template=async_url(url).database))
        with readers(url, args.count, args.readers) as reads:
            imported = run([SONGBOOK, "import", str(path)], url=url)
        print(f"  {'what':<34}{'rows/s':>10}{'seconds':>9}{'RSS MB':>10}{'PSS MB':>10}   target", flush=True)
        if copy_seconds is not None:
            row("psql \\copy, bare table", args.count, copy_seconds)
        if empty is not None:
            template = str(async_url(empty).set(database=f"{async_url(url).database}_empty"))
            asyncio.run(recreate_database(template, template=async_url(empty).database))
            rows, seconds = psql_insert(empty, url, first_new_id=1)
            row("psql insert, indexes kept", rows, seconds)
            asyncio.run(recreate_database(empty, template=async_url(template).database))
            rows, seconds = psql_insert(empty, url, first_new_id=1, rebuild=True)
            row("psql insert, indexes built after", rows, seconds)
            asyncio.run(_drop_database(template))
        row("songbook import, empty catalog", args.count, imported, "50,000 rows/s; memory under 200 MB")
        for file_format in ("csv", "ndjson"):
            output = DATA / f"bench-export.{file_format}"
            exported = run([SONGBOOK, "export", "--output", str(output)], url=url)
            output.unlink()
            row(f"songbook export ({file_format})", args.count, exported)
        print(f"  readers during the import: {reads}", flush=True)
        if name == "PostgreSQL":
            into_catalog(args, url)


def into_catalog(args: argparse.Namespace, url: str) -> None:
    """The second file into the catalog that holds the first, beside psql's insert of the same songs."""
    second = make_csv(args.count, seed=SECOND_SEED)
    reference = str(async_url(url).set(database=f"{async_url(url).database}_reference"))
    asyncio.run(recreate_database(reference, template=async_url(url).database))
    with readers(url, args.count, args.readers) as reads:
        imported = run([SONGBOOK, "import", str(second)], url=url)
    rows, psql_seconds = psql_insert(reference, url, first_new_id=args.count + 1)
    print(f"PostgreSQL: {args.count:,} other songs ({second.name}) into the catalog of {args.count:,}", flush=True)
    row("psql INSERT ... SELECT FROM staging", rows, psql_seconds)
    row("songbook import", args.count, imported, "memory under 200 MB")
    ratio = (args.count / imported.seconds) / (rows / psql_seconds)
    print(f"  import / psql's insert: {ratio:.2f}   target 0.8", flush=True)
    print(f"  readers during the import: {reads}", flush=True)


if __name__ == "__main__":
    main()
