"""The `songbook` command: serve the API and migrate its database."""

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from app import db, schema, songs
from app import seed as seeding
from app.config import Settings, SettingsError, load_settings

cli = typer.Typer(
    name="songbook",
    help="A song catalog service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
migrate_cli = typer.Typer(help="Migrate the database schema (to the latest revision by default).")
cli.add_typer(migrate_cli, name="migrate")

APP_DIR = Path(__file__).resolve().parent


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
    port: Annotated[int | None, typer.Option(help="Port to bind [default: SONGBOOK_PORT].")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    reload: Annotated[bool, typer.Option(help="Restart when the code changes (development).")] = False,
) -> None:
    """Serve the HTTP API."""
    settings = _settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=None if reload else workers,
        reload=reload,
        reload_dirs=[str(APP_DIR)] if reload else None,
        log_level=settings.log_level,
    )


@migrate_cli.callback(invoke_without_command=True)
def migrate(ctx: typer.Context) -> None:
    """Upgrade the database schema to the latest revision."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    try:
        schema.upgrade(settings.sqlalchemy_url)
    except (DBAPIError, OSError) as exc:
        raise _fail(f"cannot migrate {_where(settings)}: {_reason(exc)}") from None
    typer.echo(f"{_where(settings)} is at the latest revision ({', '.join(sorted(schema.head_revisions()))}).")


@migrate_cli.command()
def status() -> None:
    """Show the database's revision and whether it is the latest; exit 1 if it is not."""
    settings = _settings()
    try:
        current = asyncio.run(_current_revisions(settings))
    except (DBAPIError, OSError) as exc:
        raise _fail(f"cannot read {_where(settings)}: {_reason(exc)}") from None
    heads = schema.head_revisions()
    typer.echo(f"database: {_where(settings)}")
    typer.echo(f"current:  {', '.join(sorted(current)) or '(none: never migrated)'}")
    typer.echo(f"latest:   {', '.join(sorted(heads))}")
    if current != heads:
        typer.echo("The database is behind: run `songbook migrate`.")
        raise typer.Exit(1)
    typer.echo("The database is up to date.")


@cli.command()
def seed(
    count: Annotated[int, typer.Option(min=1, help="How many songs to add.")] = 1000,
    seed: Annotated[int, typer.Option(help="The same seed makes the same songs.")] = 1,
) -> None:
    """Add synthetic songs (varied names, accented artists, years) to measure on."""
    settings = _settings()
    started = time.perf_counter()
    try:
        inserted = asyncio.run(_seed(settings, count, seed))
    except IntegrityError:
        raise _fail(
            "some of these songs are in the catalog already: seed an empty one, or use another --seed"
        ) from None
    except (DBAPIError, OSError) as exc:
        raise _fail(f"cannot seed {_where(settings)}: {_reason(exc)}") from None
    elapsed = time.perf_counter() - started
    typer.echo(f"added {inserted:,} songs in {elapsed:.1f} s ({inserted / elapsed:,.0f} songs/s)")


async def _seed(settings: Settings, count: int, seed: int) -> int:
    engine = db.create_engine(settings)
    try:
        async with db.create_sessionmaker(engine)() as session:
            inserted = await songs.insert_songs(session=session, songs=seeding.generate_songs(count, seed=seed))
        # Fresh statistics for the planner after a bulk load; on PostgreSQL
        # VACUUM also merges the full-text index's pending entries.
        if engine.dialect.name == "postgresql":
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.exec_driver_sql("VACUUM ANALYZE")
        else:
            async with engine.begin() as connection:
                await connection.exec_driver_sql("ANALYZE")
        return inserted
    finally:
        await engine.dispose()


async def _current_revisions(settings: Settings) -> set[str]:
    engine = create_async_engine(settings.sqlalchemy_url)
    try:
        async with engine.connect() as connection:
            return await schema.current_revisions(connection)
    finally:
        await engine.dispose()


def _where(settings: Settings) -> str:
    return settings.sqlalchemy_url.render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def main() -> None:
    cli()
