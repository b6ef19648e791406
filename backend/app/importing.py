"""Bulk import: rows validated one by one, staged, then applied set-based in one transaction.

The rows go into a temporary staging table (by COPY on PostgreSQL, by batched
inserts on SQLite); a few set-based statements then decide each row's fate
under the conflict rule and write the catalog. Everything happens in one
transaction: an import killed at any moment leaves nothing behind, and running
it again does all of it, with no song doubled.
"""

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from itertools import chain, islice
from pathlib import Path
from typing import Any, Literal

import asyncpg
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    column,
    func,
    or_,
    select,
    table,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from app import swap
from app.checking import ArtistTexts, Rejected, Staged, check_rows, write_message
from app.errors import FileError, ImportAborted, ImportNeedsIdsPast, MaxErrorsExceeded
from app.fields import ID_MAX, utcnow
from app.formats import RawRow
from app.models import KeyString, Song, UTCDateTime

logger = logging.getLogger(__name__)

BATCH_SIZE = 5_000
# A bulk import builds the song table's secondary indexes once after its insert, instead of keeping
# them row by row, when the catalog holds at most this share of the rows it brings (_rebuilds_indexes).
# PostgreSQL builds them on a copy of the whole table: a million songs into a catalog of a million took
# 55 s so, against 77 to 87 s row by row (`make bench-transfer`, backend/README.md).
REBUILD_SHARE = {"sqlite": 0.1, "postgresql": 1.0}
# Weighed again by the songs the load adds, once its rows are decided: what pays for the rebuild. On
# PostgreSQL the copy costs what keeping the indexes does at about half the catalog (494,000 new songs
# into a million: 29.2 s either way), so a load as large as the catalog swaps while it adds at least
# half as many songs as the catalog holds; a file of the catalog's own songs adds none.
ADDED_SHARE = {"sqlite": REBUILD_SHARE["sqlite"], "postgresql": 2.0}
SQLITE_CACHE_KIB = 32 * 1024
UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE
BULK_LOCK = {"a": 0x736F6E67, "b": 1}  # PostgreSQL: the advisory lock a bulk import applies under alone


class OnConflict(StrEnum):
    """What a row that names a song already there (in the catalog or earlier in the input) does."""

    SKIP = "skip"  # the first one stays as it is
    UPDATE = "update"  # the last one wins: name and artist spelling, and the year when given
    ERROR = "error"  # the row is rejected


@dataclass(slots=True)
class Summary:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0  # named a song already there
    rejected: int = 0


@dataclass(slots=True)
class Outcome:
    """What became of one row of a batch: created, updated or duplicate, and the song's id."""

    status: Literal["created", "updated", "duplicate"]
    id: int


def _plain(rows: list[RawRow]) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    return [(item.line, item.fields, item.error) for item in rows]


class _Checker:
    """The worker process that checks a large import's rows, on the second core, and the pipes to it.

    `app.checking.serve` in a new interpreter that imports only what checking needs:
    started by multiprocessing, it imported the whole app again (the command's module
    first), 90 MB of its memory and a second or more of its start. In a session of its own: Ctrl-C
    is the import's to handle, which ends its worker. Only the worker holds its ends of
    its standard input and output, so that its end, at any moment, is an end of file for
    the import (a `ProcessPoolExecutor`'s worker killed while it sent a batch back left
    the import waiting for the rest for ever), and the import's end one for the worker,
    which then ends too.
    """

    def __init__(self) -> None:
        # The app this process runs first on the path (this module's package's folder): the worker imports the same.
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from app.checking import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
            start_new_session=True,
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._requests, self._results = self._process.stdin, self._process.stdout
        # A thread each way: the batches go and come back in order, and the event loop never waits.
        self._sending = ThreadPoolExecutor(1, thread_name_prefix="import-send")
        self._receiving = ThreadPoolExecutor(1, thread_name_prefix="import-receive")
        self._ready = self._receiving.submit(self._receive)  # its first message, once it has started

    def started(self) -> bool:
        """Whether the worker has told it is ready for batches (or has ended: the next check tells that)."""
        return self._ready.done()

    def check(
        self, source: str, rows: list[tuple[int, dict[str, Any] | None, str | None]]
    ) -> "asyncio.Future[list[Staged]]":
        """`check_rows(source, rows)`, done by the worker."""
        loop = asyncio.get_running_loop()
        # A failed send is seen as the worker's end, by the receive.
        loop.run_in_executor(self._sending, write_message, self._requests, (source, rows)).add_done_callback(_forget)
        return loop.run_in_executor(self._receiving, self._receive)

    def _receive(self) -> list[Staged]:
        try:
            checked: list[Staged] | BaseException = pickle.load(self._results)  # noqa: S301 (our worker, our pipe)
        except (EOFError, OSError, pickle.UnpicklingError):  # ended, or killed while it wrote
            raise ImportAborted("the process that checks the rows ended (out of memory?)") from None
        if isinstance(checked, BaseException):
            raise checked
        return checked

    def close(self) -> None:
        """Ends the worker, whatever it is doing: it holds nothing of the import's."""
        self._process.kill()
        self._process.wait()
        self._sending.shutdown()
        self._receiving.shutdown()
        # A batch the worker did not take whole is still in the pipe's buffer: closing flushes it, into a
        # broken pipe. The file is closed all the same; the import says why it stopped (`_receive`).
        with contextlib.suppress(BrokenPipeError):
            self._requests.close()
        self._results.close()


@contextmanager
def _uncollected() -> Iterator[None]:
    """No cyclic garbage collection meanwhile.

    The rows of a large import are millions of short-lived objects, none in a
    cycle: the collector's passes over them found nothing and took a tenth or
    more of the time. Reference counting still frees each batch.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _forget(future: "asyncio.Future[Any]") -> None:
    """Retrieves a future's exception, if any, that nothing awaits any more (else asyncio logs it)."""
    if not future.cancelled():
        future.exception()


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


STAGED_COLUMNS = (
    "id",
    "name",
    "artist",
    "year",
    "name_key",
    "artist_key",
    "name_search",
    "artist_search",
    "created_at",
    "updated_at",
)

DECIDE_PASSES = 8  # rows grouped by song again after ids were refused, at most this many times

# Where the rows wait before they are applied. `rank` is the row's place in the
# input; `song_id`, `same_as` and `rejection` are filled in by the apply step.
staging = Table(
    "import_staging",
    MetaData(),
    Column("rank", Integer, primary_key=True, autoincrement=False),
    Column("source", Integer, nullable=False),
    Column("line", Integer, nullable=False),
    Column("id", Integer),
    Column("name", String, nullable=False),
    Column("artist", String, nullable=False),
    Column("year", Integer),
    Column("name_key", KeyString, nullable=False),
    Column("artist_key", KeyString, nullable=False),
    Column("name_search", String, nullable=False),
    Column("artist_search", String, nullable=False),
    Column("created_at", UTCDateTime),
    Column("updated_at", UTCDateTime),
    Column("song_id", Integer),  # the catalog's song with the same name and artist
    Column("same_as", Integer),  # the rank of the row that stands for this one's song
    Column("rejection", String),  # why the conflict rule rejects it
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
song = Song.__table__  # type: ignore[attr-defined]

# The song table's indexes on SQLite, but its unique constraint's (the table's own: its index has no
# SQL): the statement that drops each, and the one that makes it.
_SECONDARY_INDEXES = """
    SELECT 'DROP INDEX "' || name || '"', sql FROM sqlite_master
    WHERE type = 'index' AND tbl_name = 'song' AND sql IS NOT NULL
"""


@dataclass
class Import:
    """One import, in one transaction on `connection`: `stage` rows, then `apply` the rule.

    `rejected` is called with each rejected row as soon as it is known.
    """

    connection: AsyncConnection
    on_conflict: OnConflict = OnConflict.SKIP
    rejected: Callable[[Rejected], None] = lambda row: None
    max_errors: int | None = None
    bulk: bool = False  # a large import, in a process of its own: a worker checks its rows, it may use more memory
    dry_run: bool = False  # rolled back after `apply`: the indexes are kept, whatever its size
    lock_wait_seconds: float = swap.LOCK_WAIT_SECONDS  # for transactions that hold the song table (`swap.lock`)
    sources: list[str] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)
    _staged: int = 0  # rows staged so far, the rank of the last
    _rejected_by_rule: int = 0
    _search_trigger: str | None = None

    @property
    def _postgresql(self) -> bool:
        return self.connection.dialect.name == "postgresql"

    async def start(self) -> None:
        """Makes the staging table; on SQLite, takes the write lock at once."""
        if not self._postgresql:
            if self.bulk:
                # Writing a million rows through indexes, SQLite's default 2 MB page cache thrashes.
                await self.connection.exec_driver_sql(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
            await self.connection.exec_driver_sql("DROP TABLE IF EXISTS temp.import_staging")
            self._search_trigger = await self._suspend_search_trigger()
        else:
            # The vocabulary's trigger would copy every row into a transition table: the
            # words are added once, from the staging table, by _add_search_terms.
            await self.connection.exec_driver_sql("SELECT set_config('songbook.search_terms', 'deferred', true)")
        await self.connection.run_sync(lambda sync: staging.create(sync))

    def _reject(self, row: Rejected) -> None:
        self.summary.rejected += 1
        self.rejected(row)
        if self.max_errors is not None and self.summary.rejected > self.max_errors:
            raise MaxErrorsExceeded(f"more than {self.max_errors} rows rejected")

    async def stage(self, source: str, rows: Iterable[RawRow]) -> None:
        """Validates `source`'s rows and stages the valid ones, a batch at a time."""
        source_index = len(self.sources)
        self.sources.append(source)
        try:
            await self._stage(source_index, rows)
        except FileError as exc:
            raise FileError(f"{source}: {exc}") from None

    async def _stage(self, source_index: int, rows: Iterable[RawRow]) -> None:
        # The first batch is checked here; a larger input has the rest checked in
        # a worker process, on the second core, while this one reads the next
        # batch and stages the last. A small import never starts one.
        source = self.sources[source_index]
        artists = ArtistTexts()  # for the batches this process checks
        batches = _batches(rows, BATCH_SIZE)
        first = next(batches, None)
        if first is None:
            return
        await self._keep(source_index, first, check_rows(source, _plain(first), artists))
        if not self.bulk:
            for batch in batches:
                await self._keep(source_index, batch, check_rows(source, _plain(batch), artists))
            return
        second = next(batches, None)
        if second is None:
            return
        with contextlib.closing(_Checker()) as worker, _uncollected():
            checking: tuple[list[RawRow], asyncio.Future[list[Staged]]] | None = None
            try:
                for batch in chain([second], batches):
                    if checking is None and not worker.started():
                        # Until the worker has started (a new interpreter and pydantic: 0.2 s or more
                        # on a loaded machine), this process checks the batches itself.
                        await self._keep(source_index, batch, check_rows(source, _plain(batch), artists))
                        continue
                    # Submitted before the previous batch is staged: both cores work at once.
                    submitted = batch, worker.check(source, _plain(batch))
                    previous, checking = checking, submitted
                    if previous is not None:
                        await self._keep(source_index, previous[0], await previous[1])
                if checking is not None:
                    previous, checking = checking, None
                    await self._keep(source_index, previous[0], await previous[1])
            finally:
                if checking is not None:  # stopped with a batch still being checked: its end is no one's
                    checking[1].add_done_callback(_forget)

    async def _keep(self, source_index: int, batch: list[RawRow], checked: list[Staged]) -> None:
        """Counts a batch's rows, reports its rejected ones, and stages the others."""
        records = []
        for item, result in zip(batch, checked, strict=True):
            self.summary.read += 1
            if isinstance(result, Rejected):
                self._reject(result)
                continue
            self._staged += 1
            records.append((self._staged, source_index, item.line, *result))
        if records:
            await self._copy(records)

    async def _copy(self, records: list[tuple[Any, ...]]) -> None:
        columns = ["rank", "source", "line", *STAGED_COLUMNS]
        if self._postgresql:
            # COPY, in binary, through the driver: several times faster than INSERT.
            raw = await self.connection.get_raw_connection()
            try:
                await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                    staging.name, records=records, columns=columns
                )
            except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError) as exc:
                # Raised by the driver itself, past SQLAlchemy: give it SQLAlchemy's shape.
                raise OperationalError(f"COPY {staging.name}", None, exc) from exc
            except asyncpg.InternalClientError as exc:
                # A connection the server closed between two batches: asyncpg finds its
                # goodbye unread and the protocol mid-operation. Lost all the same.
                raise OperationalError(f"COPY {staging.name}", None, exc) from exc
            except asyncpg.PostgresError as exc:
                raise DBAPIError(f"COPY {staging.name}", None, exc) from exc
        else:
            # The driver's executemany, past SQLAlchemy's per-row work: three times faster.
            # Only the timestamps need converting, to the text SQLite stores, and most rows have none.
            to_text = staging.c.created_at.type.bind_processor(self.connection.dialect)
            assert to_text is not None
            rows = [
                record
                if record[-1] is None and record[-2] is None
                else (*record[:-2], to_text(record[-2]), to_text(record[-1]))
                for record in records
            ]
            placeholders = ", ".join("?" * len(columns))
            await self.connection.exec_driver_sql(
                f"INSERT INTO temp.{staging.name} ({', '.join(columns)}) VALUES ({placeholders})",  # noqa: S608 (names of our own)
                rows,
            )

    async def apply(self, *, outcomes: bool = False) -> dict[int, Outcome]:
        """Writes the staged rows to the catalog under the conflict rule; with `outcomes`, each row's fate by rank."""
        c, now = staging.c, utcnow()
        if self._postgresql:
            # A bulk import applies alone, other imports (the batch route, the page's) together: one that
            # swaps the song table in waits for every transaction that read the table, and another import's
            # insert would wait for it in turn.
            lock = "pg_advisory_xact_lock" if self.bulk else "pg_advisory_xact_lock_shared"
            await self.connection.execute(text(f"SELECT {lock}(:a, :b)"), BULK_LOCK)
            await self.connection.exec_driver_sql(f"ANALYZE {staging.name}")  # temporary tables get no autovacuum
        # PostgreSQL builds the indexes once on a copy of the table, where it may.
        plan = await swap.plan(self.connection) if self._postgresql and self.bulk and not self.dry_run else None
        rebuild = (plan is not None or not self._postgresql) and await self._rebuilds_indexes(self._staged)
        if rebuild and self._postgresql:
            # Writers wait until the commit, so that nothing decided below changes meanwhile; readers read on.
            await swap.lock(self.connection, song.name, "EXCLUSIVE", self.lock_wait_seconds)
            # Read again under the lock: an index (or a grant, a trigger) made while the import waited
            # for it would be lost with the table the swap drops.
            plan = await swap.plan(self.connection)
            rebuild = plan is not None
        await self._decide()
        await self._report_rejections()
        updated = await self._update(now, returning=outcomes) if self.on_conflict is OnConflict.UPDATE else set()
        new = and_(c.song_id.is_(None), c.same_as.is_(None), c.rejection.is_(None))
        # Weighed again by the songs it adds: a file the catalog has already (its own export) adds none.
        rebuild = rebuild and await self._rebuilds_indexes(await self._count(new), ADDED_SHARE)
        inserted = await self._insert_by_copy(plan, new, now, outcomes) if rebuild and plan is not None else None
        if inserted is None:
            inserted = await self._insert_in_place(new, now, outcomes, rebuild=rebuild and not self._postgresql)
        self.summary.skipped = self._staged - self.summary.inserted - self.summary.updated - self._rejected_by_rule
        if not outcomes:
            return {}
        return await self._outcomes(inserted, updated)

    async def _insert_by_copy(
        self, plan: swap.Plan, new: Any, now: datetime, outcomes: bool
    ) -> set[tuple[str, str]] | None:
        """PostgreSQL: the new songs into a copy of the catalog, swapped in; None, and the copy undone, if the
        table was changed meanwhile in a way its copy would not keep (`swap.NotKept`): they go in row by row then.

        Under the import's `EXCLUSIVE` lock no other writer adds a song meanwhile: every new song is inserted.
        The ids the copy's songs took from the sequence are not given back (a sequence never gives any back:
        a create may have taken the next meanwhile), so, undone, the new songs' ids start past them.
        """
        try:
            async with self.connection.begin_nested():  # a savepoint: the copy, its songs and words, undone
                await swap.create_copy(self.connection, plan)
                await swap.copy_catalog(self.connection, plan)
                inserted = await self._insert(new, now, returning=outcomes, into_copy=True)
                await swap.build_indexes(self.connection, plan)
                await self._add_search_terms()
                await swap.swap(self.connection, plan, self.lock_wait_seconds)
        except swap.NotKept as exc:
            logger.warning("%s: its new songs are inserted into it instead, its indexes kept row by row", exc)
            return None
        return inserted

    async def _insert_in_place(self, new: Any, now: datetime, outcomes: bool, *, rebuild: bool) -> set[tuple[str, str]]:
        """The new songs into the song table itself; with `rebuild` (SQLite), its secondary indexes built after."""
        indexes = await self._drop_secondary_indexes() if rebuild else []
        expected = await self._count(new) if self.on_conflict is OnConflict.ERROR else 0
        inserted = await self._insert(new, now, returning=outcomes)
        if self.summary.inserted < expected:
            await self._refuse_added_meanwhile(new, inserted if outcomes else None)
        await self._build_indexes(indexes)
        if self._postgresql:
            # After the songs, as the trigger does: a create that brings a word new to the catalog
            # meanwhile is not kept waiting for the import's uncommitted word (nor the import for it).
            await self._add_search_terms()
        return inserted

    async def _decide(self) -> None:
        """Marks each staged row: the catalog's song it names, the row that stands for its song, its rejection."""
        c = staging.c
        # 1. The rows that name a song of the catalog.
        await self.connection.execute(
            update(staging)
            .where(c.name_key == song.c.name_key, c.artist_key == song.c.artist_key)
            .values(song_id=song.c.id)
        )
        chosen = func.max(c.rank) if self.on_conflict is OnConflict.UPDATE else func.min(c.rank)
        await self._refuse_taken_ids_in_turn()
        for _ in range(DECIDE_PASSES):
            # 2. Rows naming the same song: the first not refused stands for all (the last, to update).
            groups = (
                select(c.name_key, c.artist_key, chosen.label("rank"))
                .where(c.rejection.is_(None))
                .group_by(c.name_key, c.artist_key)
                .having(func.count() > 1)
                .subquery()
            )
            await self.connection.execute(
                update(staging)
                .where(c.rejection.is_(None), c.name_key == groups.c.name_key, c.artist_key == groups.c.artist_key)
                .where(c.rank != groups.c.rank)
                .values(same_as=groups.c.rank)
            )
            # 3. One refused for its id leaves its song to the song's next row: the rows are grouped
            # again, until no row is refused.
            if not await self._refuse_brought_ids():
                break
            await self.connection.execute(update(staging).where(c.same_as.is_not(None)).values(same_as=None))
        else:
            # Each pass reads every staged row: a chain of rows each refused for the id the next one's
            # song brings would take as many passes as it has rows. No export makes one.
            raise ImportAborted(
                f"the ids the rows bring clash in a chain of more than {DECIDE_PASSES} rows (a row refused "
                "for its id leaves its song to a row whose id is refused in turn); leave the ids out"
            )
        if self.on_conflict is OnConflict.ERROR:
            await self.connection.execute(
                update(staging)
                .where(c.rejection.is_(None), or_(c.song_id.is_not(None), c.same_as.is_not(None)))
                .values(rejection="duplicate")
            )
        if self.on_conflict is OnConflict.UPDATE:
            await self._keep_earlier_years()

    async def _refuse_brought_ids(self) -> bool:
        """Whether a row was refused for the id it brings: a row that stands for a new song may bring its
        id (from an export), but not one that is another song's, nor one an earlier such row brings."""
        c = staging.c
        standing = and_(c.song_id.is_(None), c.same_as.is_(None), c.rejection.is_(None), c.id.is_not(None))
        taken = await self.connection.execute(
            update(staging).where(standing, c.id.in_(select(song.c.id))).values(rejection="id_taken")
        )
        given = (
            select(c.id, func.min(c.rank).label("rank")).where(standing).group_by(c.id).having(func.count() > 1)
        ).subquery()
        repeated = await self.connection.execute(
            update(staging).where(standing, c.id == given.c.id, c.rank != given.c.rank).values(rejection="id_repeated")
        )
        return bool(taken.rowcount or repeated.rowcount)

    async def _keep_earlier_years(self) -> None:
        """The last row of a song, without a year, takes the year of the last row before it that gives one.

        As if the rows were imported one after another: a row without a year
        leaves the year the song has, and the row before gave it one.
        """
        c = staging.c
        latest = func.row_number().over(partition_by=c.same_as, order_by=c.rank.desc())
        given = (
            select(c.same_as, c.year, latest.label("latest"))
            .where(c.same_as.is_not(None), c.rejection.is_(None), c.year.is_not(None))
            .subquery()
        )
        last_given = select(given.c.same_as, given.c.year).where(given.c.latest == 1).subquery()
        await self.connection.execute(
            update(staging)
            .where(c.rank == last_given.c.same_as, c.year.is_(None), c.rejection.is_(None))
            .values(year=last_given.c.year)
        )

    async def _refuse_taken_ids_in_turn(self) -> None:
        """Refuses at once the rows of a new song that the passes of `_decide` would refuse one by one.

        Such a row brings an id the catalog's songs hold, and no row of its song
        comes before it (after it, to update) that could stand instead: one with
        no id, or a free one. A song repeated in many rows, each with the same
        taken id, then costs one statement, not a pass a row.
        """
        c = staging.c
        other = staging.alias("other")
        taken = select(song.c.id)
        before = other.c.rank > c.rank if self.on_conflict is OnConflict.UPDATE else other.c.rank < c.rank
        could_stand = (
            select(other.c.rank)
            .where(other.c.name_key == c.name_key, other.c.artist_key == c.artist_key, other.c.rejection.is_(None))
            .where(before, or_(other.c.id.is_(None), other.c.id.not_in(taken)))
            .exists()
        )
        await self.connection.execute(
            update(staging)
            .where(c.song_id.is_(None), c.rejection.is_(None), c.id.in_(taken), ~could_stand)
            .values(rejection="id_taken")
        )

    async def _update(self, now: datetime, *, returning: bool) -> set[int]:
        """Updates the catalog's songs that rows name (under `OnConflict.UPDATE`); with `returning`, their ids."""
        c = staging.c
        year = func.coalesce(c.year, song.c.year)
        statement = (
            update(song)
            .where(song.c.id == c.song_id, c.same_as.is_(None))
            .where(or_(song.c.name != c.name, song.c.artist != c.artist, song.c.year.is_distinct_from(year)))
            .values(
                name=c.name,
                artist=c.artist,
                year=year,
                name_key=c.name_key,
                artist_key=c.artist_key,
                name_search=c.name_search,
                artist_search=c.artist_search,
                version=song.c.version + 1,
                updated_at=func.coalesce(c.updated_at, now),
            )
        )
        if not returning:
            self.summary.updated = (await self.connection.execute(statement)).rowcount
            return set()
        updated = set((await self.connection.execute(statement.returning(song.c.id))).scalars())
        self.summary.updated = len(updated)
        return updated

    async def _report_rejections(self) -> None:
        c = staging.c
        kept = staging.alias("kept")
        statement = (
            select(c.source, c.line, c.rejection, c.id, c.song_id, kept.c.source, kept.c.line)
            .outerjoin(kept, kept.c.rank == c.same_as)
            .where(c.rejection.is_not(None))
            .order_by(c.rank)
        )
        for source, line, rejection, song_id, existing_id, kept_source, kept_line in await self.connection.execute(
            statement
        ):
            self._rejected_by_rule += 1
            row = Rejected(self.sources[source], line, "")
            if rejection == "duplicate" and existing_id is not None:
                row.reason, row.existing_id = f"the catalog has this song already, with id {existing_id}", existing_id
            elif rejection == "duplicate":
                row.reason = f"the same song as {self._place(source, kept_source, kept_line)}"
                row.same_as = kept_line
            elif rejection == "id_taken":
                row.reason = f"id {song_id} is another song's"
            else:
                row.reason = f"id {song_id} is given to an earlier row too"
            self._reject(row)

    def _place(self, source: int, other_source: int, other_line: int) -> str:
        return f"line {other_line}" if source == other_source else f"{self.sources[other_source]}:{other_line}"

    async def _rebuilds_indexes(self, rows: int, share: dict[str, float] = REBUILD_SHARE) -> bool:
        """Whether the secondary indexes are built once after the insert of `rows` rather than kept row by row.

        For a bulk import (not a dry run) of a batch or more that brings many rows for the
        catalog (`share`: the catalog holds at most this share of them). SQLite's readers read
        on while the import drops and builds them. On PostgreSQL, where dropping an index would
        lock readers out until the commit, the import fills a copy of the table and swaps it in
        (`swap`), where `swap.plan` says it may: else the indexes are kept.
        """
        if not self.bulk or self.dry_run or rows < BATCH_SIZE:
            return False
        most = int(rows * share[self.connection.dialect.name])
        bounded = select(func.count()).select_from(select(song.c.id).limit(most + 1).subquery())
        return bool((await self.connection.execute(bounded)).scalar_one() <= most)

    async def _drop_secondary_indexes(self) -> list[str]:
        """Drops the song table's secondary indexes (SQLite); the statements that make them again."""
        found: list[tuple[str, str]] = [tuple(row) for row in await self.connection.exec_driver_sql(_SECONDARY_INDEXES)]
        for drop, _ in found:
            await self.connection.exec_driver_sql(drop)
        return [make for _, make in found]

    async def _build_indexes(self, statements: list[str]) -> None:
        for statement in statements:
            await self.connection.exec_driver_sql(statement)

    async def _insert(
        self, new: Any, now: datetime, *, returning: bool, into_copy: bool = False
    ) -> set[tuple[str, str]]:
        """Inserts the new songs, into the catalog or (`into_copy`) into the copy of its table that `swap` made."""
        c = staging.c
        new_id = await (self._ids_from_sequence(new) if self._postgresql else self._ids_past_brought(new))
        rows = select(
            new_id,
            c.name,
            c.artist,
            c.year,
            c.name_key,
            c.artist_key,
            c.name_search,
            c.artist_search,
            func.coalesce(c.created_at, now),
            func.coalesce(c.updated_at, c.created_at, now),
        ).where(new)
        target = table(swap.COPY, *(column(existing.name) for existing in song.c)) if into_copy else song
        insert = (postgresql.insert if self._postgresql else sqlite.insert)(target)
        statement = insert.from_select(["id", *STAGED_COLUMNS[1:]], rows.order_by(c.rank))
        if not into_copy:  # the copy has no index to check against until it is built: its songs are all new
            statement = statement.on_conflict_do_nothing(index_elements=["name_key", "artist_key"])
        # SQLite: the largest id before the insert, to tell the new songs by (see _index_for_search).
        before = 0
        if self._search_trigger is not None:
            before = (await self.connection.execute(select(func.coalesce(func.max(song.c.id), 0)))).scalar_one()
        inserted: set[tuple[str, str]] = set()
        try:
            if returning:
                result = await self.connection.execute(statement.returning(target.c.name_key, target.c.artist_key))
                inserted = {(name_key, artist_key) for name_key, artist_key in result}
                self.summary.inserted = len(inserted)
            else:
                self.summary.inserted = (await self.connection.execute(statement)).rowcount
        except IntegrityError as exc:
            # _decide found every id a row brings free; a song written since took one (on PostgreSQL,
            # where writers go on during an import: a keyed create's id, set aside beforehand). Any
            # other refusal is no race, but a fault: as it is.
            if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            raise ImportAborted(
                "a song added while the import ran took an id that a row brings; run the import again: "
                "that row will be rejected"
            ) from None
        if self._search_trigger is not None:
            await self._index_for_search(before)
        return inserted

    async def _ids_from_sequence(self, new: Any) -> Any:
        """PostgreSQL: the id of each new row; those without one from the table's sequence, moved past
        the ids the rows bring first, so that the service never hands those out again."""
        c = staging.c
        sequence = (await self.connection.exec_driver_sql("SELECT pg_get_serial_sequence('song', 'id')")).scalar()
        last = "coalesce(pg_sequence_last_value(CAST(:sequence AS regclass)), 0)"
        brought = (await self.connection.execute(select(func.max(c.id)).where(new))).scalar()
        if brought is not None:
            await self.connection.execute(
                text(f"SELECT setval(CAST(:sequence AS regclass), :brought) WHERE :brought > {last}"),
                {"sequence": sequence, "brought": brought},
            )
        await self._check_ids_left(
            (await self.connection.execute(text(f"SELECT {last}"), {"sequence": sequence})).scalar_one(), new
        )
        return func.coalesce(c.id, func.nextval(sequence))

    async def _ids_past_brought(self, new: Any) -> Any:
        """SQLite: the id of each new row; those without one numbered past every id taken or brought.

        Left to SQLite, a row without an id takes the next after the largest so far, in the order of
        the insert: one brought by a later row (7, none, 8: the second takes 8, and the third fails).
        So the table's AUTOINCREMENT counter (`sqlite_sequence`) is moved past the ids the rows bring
        first, as PostgreSQL's sequence is; SQLite then numbers the others past it, in the insert's order.
        """
        c = staging.c
        brought = (await self.connection.execute(select(func.max(c.id)).where(new))).scalar()
        if brought is not None:
            await self.connection.execute(
                text("UPDATE sqlite_sequence SET seq = :brought WHERE name = 'song' AND seq < :brought"),
                {"brought": brought},
            )
            await self.connection.execute(
                text(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT 'song', :brought "
                    "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'song')"
                ),
                {"brought": brought},
            )
        taken = select(func.max(song.c.id)).union_all(
            select(func.max(text("seq"))).select_from(text("sqlite_sequence")).where(text("name = 'song'"))
        )
        await self._check_ids_left(
            (await self.connection.execute(select(func.max(taken.subquery().c[0])))).scalar() or 0, new
        )
        return c.id

    async def _check_ids_left(self, largest: int, new: Any) -> None:
        """Stops the import if its new songs without an id cannot all be numbered past `largest`."""
        if largest + self.summary.read <= ID_MAX:  # room for every row read: nothing to count
            return
        if largest + await self._count(and_(new, staging.c.id.is_(None))) > ID_MAX:
            raise ImportNeedsIdsPast(
                f"the new songs would need ids past {ID_MAX:,}, the largest a song may have (a song has, or a row "
                f"brings, id {largest:,}); leave that id out"
            )

    async def _count(self, where: Any) -> int:
        return int((await self.connection.execute(select(func.count()).where(where))).scalar_one())

    async def _refuse_added_meanwhile(self, new: Any, inserted: set[tuple[str, str]] | None) -> None:
        """Under `OnConflict.ERROR`, the rows whose songs another writer added since `_decide`: refused as duplicates.

        PostgreSQL only (SQLite's import holds the write lock from its start): the
        insert passed them over (its ON CONFLICT). Named if the insert told which
        songs it added (`inserted`); else the import stops, for a run that will.
        """
        if inserted is None:
            raise ImportAborted(
                "songs the input has were added by another writer while the import ran; run it again: "
                "those rows will be rejected as duplicates"
            )
        c = staging.c
        found = select(c.source, c.line, c.name_key, c.artist_key, song.c.id).join(
            song, and_(song.c.name_key == c.name_key, song.c.artist_key == c.artist_key)
        )
        for source, line, name_key, artist_key, song_id in await self.connection.execute(
            found.where(new).order_by(c.rank)
        ):
            if (name_key, artist_key) not in inserted:
                self._rejected_by_rule += 1
                reason = f"the catalog has this song already, with id {song_id}"
                self._reject(Rejected(self.sources[source], line, reason, existing_id=song_id))

    async def _add_search_terms(self) -> None:
        """The words of the songs to insert or update, into the vocabulary (what its trigger, deferred, would do)."""
        await self.connection.execute(
            text(
                # The words split in the select list, not joined to each row as a function scan: a
                # million songs' words in about a quarter less time (psql, the two side by side).
                "INSERT INTO search_term (term) SELECT DISTINCT word FROM ("
                "SELECT unnest(string_to_array(s.name_search || ' ' || s.artist_search, ' ')) AS word "
                "FROM import_staging AS s WHERE s.same_as IS NULL AND s.rejection IS NULL "
                "AND (s.song_id IS NULL OR :updating)) AS words "
                # In order, as the trigger adds them: two writers' words never wait for each other in a circle.
                "WHERE word <> '' ORDER BY word ON CONFLICT DO NOTHING"
            ),
            {"updating": self.on_conflict is OnConflict.UPDATE},
        )

    async def _suspend_search_trigger(self) -> str:
        # SQLite's search index trigger costs ten times more, row by row, than
        # one set-based insert into the index: drop it for the insert and
        # restore it after, in the same transaction (DDL is transactional in SQLite).
        trigger_sql = (
            await self.connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'song_search_insert'"
            )
        ).scalar_one()
        await self.connection.exec_driver_sql("DROP TRIGGER song_search_insert")
        return str(trigger_sql)

    async def _index_for_search(self, before: int) -> None:
        assert self._search_trigger is not None
        # The write lock is held since the start: the new songs are those past the
        # largest id before the insert, and those that brought a smaller id; read
        # in id order, not looked up one by one by their keys (four times slower).
        await self.connection.execute(
            text(
                "INSERT INTO song_search (rowid, name_search, artist_search) "
                "SELECT id, name_search, artist_search FROM song WHERE id > :before "
                "UNION ALL "
                "SELECT song.id, song.name_search, song.artist_search FROM temp.import_staging AS s "
                "JOIN song ON song.id = s.id "
                "WHERE s.id <= :before AND s.song_id IS NULL AND s.same_as IS NULL AND s.rejection IS NULL"
            ),
            {"before": before},
        )
        await self.connection.exec_driver_sql(self._search_trigger)
        self._search_trigger = None

    async def _outcomes(self, inserted: set[tuple[str, str]], updated: set[int]) -> dict[int, Outcome]:
        c = staging.c
        # Outer: a song found there (skipped) may have been deleted since; it was a duplicate still.
        statement = select(c.rank, c.name_key, c.artist_key, c.song_id, c.same_as, song.c.id).outerjoin(
            song, and_(song.c.name_key == c.name_key, song.c.artist_key == c.artist_key)
        )
        result: dict[int, Outcome] = {}
        for rank, name_key, artist_key, existing_id, same_as, found_id in await self.connection.execute(statement):
            song_id = found_id if found_id is not None else existing_id
            if same_as is None and existing_id is None and (name_key, artist_key) in inserted:
                result[rank] = Outcome("created", song_id)
            elif same_as is None and song_id in updated:
                result[rank] = Outcome("updated", song_id)
            else:
                result[rank] = Outcome("duplicate", song_id)
        return result
