"""The database schema's migration state, through Alembic."""

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from app.db import DATABASE_ERRORS, Database, ensure_sqlite_dir
from app.errors import DatabaseUnavailable, database_unavailable

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def alembic_config(database_url: URL | str) -> Config:
    """Alembic's configuration for this database, with logging left to the caller."""
    config = Config(ALEMBIC_INI)
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: URL | str, revision: str = "head") -> None:
    """Migrate the database to `revision` (the latest by default)."""
    if isinstance(database_url, URL):
        ensure_sqlite_dir(database_url)
    command.upgrade(alembic_config(database_url), revision)


@functools.cache
def head_revisions() -> frozenset[str]:
    """The revisions a fully migrated database is at (read from the scripts once)."""
    return frozenset(ScriptDirectory.from_config(Config(ALEMBIC_INI)).get_heads())


async def current_revisions(db: Database) -> set[str]:
    """The revisions the database is at: empty if it was never migrated."""

    def read(sync_connection: object) -> set[str]:
        return set(MigrationContext.configure(sync_connection).get_current_heads())  # type: ignore[arg-type]

    async with db.engine.connect() as connection:
        return await connection.run_sync(read)


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision of this code's migrations."""
    return frozenset(script.revision for script in ScriptDirectory.from_config(Config(ALEMBIC_INI)).walk_revisions())


async def check_ready(db: Database) -> None:
    """Raises unless the database answers, on both ways to it, and its schema is at the latest migration.

    A schema past it (a revision this code does not know) is ready too: a new
    version's `songbook migrate` runs before its instances start, while this
    version's still serve.
    """
    try:
        current = await current_revisions(db)
        await db.ping()
    except DATABASE_ERRORS as exc:
        # Whatever the database answers instead (a file that is not a database, say): not ready.
        unavailable = database_unavailable(exc)
        raise unavailable or DatabaseUnavailable("The database does not answer as one.") from exc
    if _behind(current):
        raise DatabaseUnavailable(
            f"The database schema is at {sorted(current) or 'no revision'}, not at the latest migration; "
            "run `songbook migrate`."
        )


def _behind(current: set[str]) -> bool:
    """Whether a schema at `current` is older than this code's latest (or was never made)."""
    return current != head_revisions() and (not current or current <= known_revisions())


async def behind(db: Database) -> bool:
    """Whether `songbook migrate` is due (False if the database cannot tell): what a statement on a
    table or column the database lacks means."""
    try:
        return _behind(await current_revisions(db))
    except DATABASE_ERRORS:
        return False


NO_SCHEMA = "The database has no songbook schema; run `songbook migrate`."


def sqlite_file_missing(url: URL) -> bool:
    """Whether `url` is a SQLite file that is not there (a connection would make it, empty)."""
    return url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file()


def check_exists(url: URL) -> None:
    """Raises as `check_migrated` does for a SQLite file that is not there, before a connection makes it:
    a command given a mistyped path leaves no empty file behind."""
    if sqlite_file_missing(url):
        raise DatabaseUnavailable(NO_SCHEMA)


async def check_migrated(db: Database) -> None:
    """Raises unless the database was migrated at all: a command's first step (an older schema is read as it is)."""
    if not await current_revisions(db):
        raise DatabaseUnavailable(NO_SCHEMA)
