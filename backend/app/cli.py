"""The `songbook` command: serve the API and migrate its database."""

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import closing, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, TypeVar

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console

from app import db, keys, logs, metrics, schema, songs, swap
from app import seed as seeding
from app.checking import Rejected
from app.config import Settings, load_settings
from app.db import Database
from app.errors import AppError, FileError, ImportAborted, InvalidParameter, MaxErrorsExceeded, SettingsError
from app.formats import Format, RawRow, format_of, read_rows
from app.importing import OnConflict, Summary
from app.models import ApiKeyCreate, ApiKeyPublic, Scope, SongQuery
from app.progress import RowProgress

cli = typer.Typer(
    name="songbook",
    help="A song catalog service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
migrate_cli = typer.Typer(help="Migrate the database schema (to the latest revision by default).")
cli.add_typer(migrate_cli, name="migrate")
keys_cli = typer.Typer(help="Make, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")

APP_DIR = Path(__file__).resolve().parent
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"songbook: {exc}", err=True)
        raise typer.Exit(2) from None


def _fail(message: str) -> typer.Exit:
    typer.echo(f"songbook: {message}", err=True)
    return typer.Exit(1)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [default: SONGBOOK_HOST].")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port to bind [default: SONGBOOK_PORT].")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes [default: SONGBOOK_WORKERS].")] = None,
    reload: Annotated[bool, typer.Option(help="Restart when the code changes (development).")] = False,
) -> None:
    """Serve the HTTP API."""
    settings = _settings()
    workers = workers or settings.workers
    if workers > 1 and not settings.redis_url:
        typer.echo(
            "songbook: each of the workers keeps rate limits of its own; set SONGBOOK_REDIS_URL for limits they share",
            err=True,
        )
    with _metrics_shared(settings.metrics, workers=1 if reload else workers):
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=None if reload else workers,
            reload=reload,
            reload_dirs=[str(APP_DIR)] if reload else None,
            log_level=settings.log_level,
            # Every record in songbook's format; its own access log replaces uvicorn's.
            log_config=logs.logging_config(settings.log_level, settings.log_format),
            access_log=False,
            # Behind a proxy, the client's address (for the rate limits) is in X-Forwarded-For.
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )


@contextmanager
def _metrics_shared(on: bool, *, workers: int) -> Iterator[None]:
    """With several workers, their metrics are kept in files that every scrape adds up.

    In PROMETHEUS_MULTIPROC_DIR if it is set (emptied first, whatever the workers: values of
    an earlier run would be added to this one's), else, for several workers, in a folder of
    its own, removed at exit.
    """
    given = os.environ.get(metrics.MULTIPROCESS_DIR_VARIABLE)
    if not on or (workers == 1 and not given):
        yield
        return
    with contextlib.ExitStack() as stack:
        folder = given or stack.enter_context(tempfile.TemporaryDirectory(prefix="songbook-metrics-"))
        metrics.prepare_multiprocess_dir(folder)
        os.environ[metrics.MULTIPROCESS_DIR_VARIABLE] = folder  # read by each worker as it starts
        yield


@migrate_cli.callback(invoke_without_command=True)
def migrate(ctx: typer.Context) -> None:
    """Upgrade the database schema to the latest revision."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    try:
        schema.upgrade(settings.sqlalchemy_url)
    except db.DATABASE_ERRORS as exc:
        raise _fail(f"cannot migrate {_where(settings)}: {_reason(exc)}") from None
    typer.echo(f"{_where(settings)} is at the latest revision ({', '.join(sorted(schema.head_revisions()))}).")


@migrate_cli.command()
def status() -> None:
    """Show the database's revision and whether it is the latest; exit 1 if it is behind."""
    settings = _settings()
    try:
        # A SQLite file that is not there is never migrated: asking would make it (a path mistyped, left behind).
        missing = schema.sqlite_file_missing(settings.sqlalchemy_url)
        current = set() if missing else asyncio.run(_current_revisions(settings))
    except db.DATABASE_ERRORS as exc:
        raise _fail(f"cannot read {_where(settings)}: {_reason(exc)}") from None
    heads = schema.head_revisions()
    typer.echo(f"database: {_where(settings)}")
    typer.echo(f"current:  {', '.join(sorted(current)) or '(none: never migrated)'}")
    typer.echo(f"latest:   {', '.join(sorted(heads))}")
    if current and not current <= schema.known_revisions():
        typer.echo("The database is past this version's latest: a newer version migrated it.")
        return
    if current != heads:
        typer.echo("The database is behind: run `songbook migrate`.")
        raise typer.Exit(1)
    typer.echo("The database is up to date.")


@cli.command("import")
def import_songs(
    files: Annotated[list[str], typer.Argument(help="CSV, NDJSON or JSON files; - reads standard input.")],
    file_format: Annotated[
        Format | None, typer.Option("--format", help="The files' format [default: told by the extension].")
    ] = None,
    on_conflict: Annotated[
        OnConflict, typer.Option(help="For a row naming a song already there (or earlier in the input).")
    ] = OnConflict.SKIP,
    max_errors: Annotated[
        int | None, typer.Option(min=0, help="Stop, importing nothing, after more rejected rows than this.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Check every row and report, but write nothing.")] = False,
    lock_wait: Annotated[
        float,
        typer.Option(
            min=0,
            help="PostgreSQL: the longest to wait, in seconds, for other transactions that hold the song table "
            "(an export, a long write, a session left open) before stopping, importing nothing.",
        ),
    ] = swap.LOCK_WAIT_SECONDS,
) -> None:
    """Import songs from files, in one transaction: all of them, or (killed or failed) none.

    Rejected rows are reported with their file and line; the others are imported.
    Exit status: 0 all imported, 3 some rows rejected, 1 nothing imported.
    """
    settings = _settings()
    sources = []
    for name in files:
        if name == "-" and file_format is None:
            raise _fail("give --format to read standard input")
        try:
            sources.append((name, file_format or format_of(name)))
        except FileError as exc:
            raise _fail(str(exc)) from None
    started = time.perf_counter()
    console = Console(stderr=True, soft_wrap=True)
    try:
        with _warnings_on(console):
            summary = asyncio.run(_import(settings, sources, console, on_conflict, max_errors, dry_run, lock_wait))
    except (FileError, MaxErrorsExceeded, ImportAborted) as exc:
        raise _fail(f"{exc}; nothing was imported") from None
    except db.DATABASE_ERRORS as exc:
        raise _fail(f"cannot import into {_where(settings)}: {_reason(exc)}; nothing was imported") from None
    except AppError as exc:  # a schema not migrated
        raise _fail(f"cannot import into {_where(settings)}: {exc.detail}") from None
    except KeyboardInterrupt:
        raise _fail("interrupted; nothing was imported") from None
    elapsed = time.perf_counter() - started
    verb = "would be" if dry_run else "were"
    typer.echo(
        f"{summary.read:,} rows read in {elapsed:.1f} s ({summary.read / elapsed:,.0f} rows/s): "
        f"{summary.inserted:,} songs {verb} added, {summary.updated:,} updated, "
        f"{summary.skipped:,} skipped as already there, {summary.rejected:,} rejected"
        + ("; dry run, nothing was written" if dry_run else "")
    )
    if summary.rejected:
        raise typer.Exit(3)


async def _import(
    settings: Settings,
    files: list[tuple[str, Format]],
    console: Console,
    on_conflict: OnConflict,
    max_errors: int | None,
    dry_run: bool,
    lock_wait: float,
) -> Summary:
    schema.check_exists(settings.sqlalchemy_url)
    async with db.connect(settings, long_running=True) as database:
        await schema.check_migrated(database)
        with RowProgress(console) as progress, closing(_sources(files, progress)) as sources:
            return await songs.import_songs(
                db=database,
                sources=sources,
                on_conflict=on_conflict,
                rejected=lambda row: _report(console, row),
                max_errors=max_errors,
                dry_run=dry_run,
                applying=lambda summary: progress.finish(f"applying {summary.read:,} rows..."),
                bulk=True,  # the command's process is the import's alone
                lock_wait_seconds=lock_wait,
            )


def _sources(
    files: list[tuple[str, Format]], progress: RowProgress
) -> Generator[tuple[str, Iterator[RawRow]], None, None]:
    """Each file's name and rows, counted by `progress`; open while its rows are read, closed with the generator."""
    for name, file_format in files:
        with _open(name) as stream:
            size = os.fstat(stream.fileno()).st_size if name != "-" else None
            label = "<stdin>" if name == "-" else name
            yield label, progress.track(read_rows(stream, file_format), name=label, stream=stream, size=size)


def _report(console: Console, row: Rejected) -> None:
    console.print(str(row), markup=False, highlight=False, soft_wrap=True)


class _ConsoleWarnings(logging.Handler):
    """songbook's warnings while an import runs (its songs sent in row by row instead), told as its errors are,
    on its console: above a progress bar, where one is shown."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # as every handler of the standard library's: a bad record is not the command's failure
            self.handleError(record)
            return
        self.console.print(f"songbook: warning: {message}", markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _warnings_on(console: Console) -> Iterator[None]:
    handler, logger = _ConsoleWarnings(console), logging.getLogger("app")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@contextmanager
def _open(name: str) -> Iterator[IO[bytes]]:
    if name == "-":
        yield sys.stdin.buffer
        return
    try:
        stream = open(name, "rb")  # noqa: SIM115 (closed below, after the errors of opening it are told apart)
    except OSError as exc:
        raise FileError(f"cannot read {name}: {exc.strerror or exc}") from None
    with stream:
        yield stream


class ExportFormat(StrEnum):
    """What `songbook export` writes: not .json, one array, which a reader would hold whole."""

    CSV = "csv"
    NDJSON = "ndjson"


@cli.command("export")
def export_songs(
    output: Annotated[str, typer.Option("--output", "-o", help="The file to write; - for standard output.")] = "-",
    file_format: Annotated[
        ExportFormat | None, typer.Option("--format", help="[default: told by the extension, else csv].")
    ] = None,
    artist: Annotated[str | None, typer.Option(help="Only this artist's songs.")] = None,
    name: Annotated[str | None, typer.Option(help="Only songs of this name.")] = None,
    year: Annotated[int | None, typer.Option(help="Only songs of this year.")] = None,
    year_from: Annotated[int | None, typer.Option(help="Only songs of this year or later.")] = None,
    year_to: Annotated[int | None, typer.Option(help="Only songs of this year or earlier.")] = None,
    q: Annotated[str | None, typer.Option(help="Only songs this search finds.")] = None,
) -> None:
    """Export the songs (all, or those the filters match, as GET /songs takes them), in id order."""
    settings = _settings()
    try:
        query = SongQuery(artist=artist, name=name, year=year, year_from=year_from, year_to=year_to, q=q)
    except ValidationError as exc:
        raise _fail("; ".join(_option("-".join(map(str, e["loc"])), e["msg"]) for e in exc.errors())) from None
    try:
        chosen = Format(file_format) if file_format else (format_of(output) if output != "-" else Format.CSV)
    except FileError:
        raise _fail(f"{output}: cannot tell the format from the extension; give --format csv or ndjson") from None
    if chosen is Format.JSON:
        raise _fail(f"{output}: export writes csv or ndjson, not json; give --format csv or ndjson")
    started = time.perf_counter()
    try:
        count = asyncio.run(_export(settings, query, chosen, output))
    except FileError as exc:
        raise _fail(str(exc)) from None
    except InvalidParameter as exc:  # options the query refuses together (--year-from after --year-to)
        raise _fail(
            "; ".join(_option(error["field"], error["message"]) for error in exc.extensions["errors"])
        ) from None
    except AppError as exc:  # a schema not migrated, among others
        raise _fail(f"cannot export from {_where(settings)}: {exc.detail}") from None
    except db.DATABASE_ERRORS as exc:
        raise _fail(f"cannot export from {_where(settings)}: {_reason(exc)}") from None
    elapsed = time.perf_counter() - started
    typer.echo(f"exported {count:,} songs in {elapsed:.1f} s ({count / elapsed:,.0f} songs/s)", err=True)


async def _export(settings: Settings, query: SongQuery, file_format: Format, output: str) -> int:
    count = 0
    schema.check_exists(settings.sqlalchemy_url)
    async with db.connect(settings, long_running=True) as database:
        await schema.check_migrated(database)
        with _create(output) as write:
            async for chunk in songs.export_songs(db=database, query=query, file_format=file_format):
                write(chunk)
                count += chunk.count(b"\n")
    return count - 1 if file_format is Format.CSV else count  # less the header


@contextmanager
def _create(name: str) -> Iterator[Callable[[bytes], object]]:
    """Writes to the file `name` (- for standard output); its errors are `FileError`s, told apart from the
    database's (a connection refused is an OSError too)."""

    def failed(exc: OSError) -> FileError:
        return FileError(f"cannot write {name}: {exc.strerror or exc}")

    def writer(stream: IO[bytes]) -> Callable[[bytes], object]:
        def write(chunk: bytes) -> None:
            try:
                stream.write(chunk)
            except OSError as exc:
                raise failed(exc) from None

        return write

    if name == "-":
        yield writer(sys.stdout.buffer)
        try:
            sys.stdout.buffer.flush()
        except OSError as exc:
            raise failed(exc) from None
        return
    # Written beside the target and renamed into place: an export that fails leaves no half file.
    partial = Path(f"{name}.partial")
    try:
        stream = open(partial, "wb")  # noqa: SIM115 (closed below, its errors told apart from the body's)
    except OSError as exc:
        raise failed(exc) from None
    try:
        yield writer(stream)
    except BaseException:  # the database's errors among them: raised as they are
        with contextlib.suppress(OSError):
            stream.close()
        partial.unlink(missing_ok=True)
        raise
    try:
        stream.close()  # the last bytes written
        partial.replace(name)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise failed(exc) from None


@cli.command()
def seed(
    count: Annotated[int, typer.Option(min=1, help="How many songs to add.")] = 1000,
    seed: Annotated[int, typer.Option(help="The same seed makes the same songs.")] = 1,
) -> None:
    """Add synthetic songs (varied names, accented artists, years) to measure on."""
    settings = _settings()
    started = time.perf_counter()
    try:
        summary = asyncio.run(_seed(settings, count, seed))
    except db.DATABASE_ERRORS as exc:
        raise _fail(f"cannot seed {_where(settings)}: {_reason(exc)}") from None
    except AppError as exc:  # a schema not migrated
        raise _fail(f"cannot seed {_where(settings)}: {exc.detail}") from None
    elapsed = time.perf_counter() - started
    skipped = f" ({summary.skipped:,} were there already)" if summary.skipped else ""
    typer.echo(f"added {summary.inserted:,} songs in {elapsed:.1f} s ({count / elapsed:,.0f} songs/s){skipped}")


async def _seed(settings: Settings, count: int, seed: int) -> Summary:
    schema.check_exists(settings.sqlalchemy_url)
    async with db.connect(settings, long_running=True) as database:
        await schema.check_migrated(database)
        rows = (RawRow(line, song) for line, song in enumerate(seeding.generate_songs(count, seed=seed), start=1))
        summary = await songs.import_songs(db=database, sources=[("seed", rows)], bulk=True)
        await database.analyze()
    return summary


@keys_cli.command("create")
def create_key(
    name: Annotated[str, typer.Option(help="A name for the key, unique: who or what uses it.")],
    scope: Annotated[Scope, typer.Option(help="read, write (and read) or admin (and manage keys).")],
) -> None:
    """Make a key and print it: this once only, as only its hash is kept."""
    try:
        key_in = ApiKeyCreate(name=name, scope=scope)
    except ValidationError as exc:
        raise _fail("; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())) from None
    created = _with_database(lambda database: keys.create_key(db=database, key_in=key_in))
    typer.echo(created.key)
    typer.echo(f"Made key {created.id} ({created.name!r}, {created.scope}); it is shown this once.", err=True)


@keys_cli.command("list")
def list_keys() -> None:
    """List the keys (never their secrets)."""
    for key in _with_database(lambda database: keys.list_keys(db=database)):
        used = key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never"
        state = f"revoked {key.revoked_at.isoformat(timespec='seconds')}" if key.revoked_at else "active"
        typer.echo(f"{key.id}\t{key.name}\t{key.scope}\tsb_{key.prefix}_...\tlast used {used}\t{state}")


@keys_cli.command("revoke")
def revoke_key(key: Annotated[str, typer.Argument(help="The key's name or id.")]) -> None:
    """Revoke a key: it is refused from now on."""

    async def revoke(database: Database) -> ApiKeyPublic:
        return await keys.revoke_key(db=database, key_id=await keys.find_key_id(db=database, name_or_id=key))

    revoked = _with_database(revoke)
    typer.echo(f"Revoked key {revoked.id} ({revoked.name!r}).")


def _with_database(work: Callable[[Database], Awaitable[T]]) -> T:
    settings = _settings()

    async def run() -> T:
        schema.check_exists(settings.sqlalchemy_url)
        async with db.connect(settings) as database:
            await schema.check_migrated(database)
            return await work(database)

    try:
        return asyncio.run(run())
    except AppError as exc:
        raise _fail(exc.detail) from None
    except db.DATABASE_ERRORS as exc:
        raise _fail(f"cannot reach {_where(settings)}: {_reason(exc)}") from None


async def _current_revisions(settings: Settings) -> set[str]:
    async with db.connect(settings) as database:
        return await schema.current_revisions(database)


def _where(settings: Settings) -> str:
    return settings.sqlalchemy_url.render_as_string(hide_password=True)


def _option(field: str, message: str) -> str:
    """What is wrong with a query's field, told of the option that gives it."""
    return f"--{field.replace('_', '-')}: {message}"


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def main() -> None:
    cli()
