"""The database schema's migration state, through Alembic."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import ensure_sqlite_dir

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


def head_revisions() -> set[str]:
    """The revisions a fully migrated database is at."""
    return set(ScriptDirectory.from_config(Config(ALEMBIC_INI)).get_heads())


async def current_revisions(connection: AsyncConnection) -> set[str]:
    """The revisions the database is at: empty if it was never migrated."""

    def read(sync_connection: object) -> set[str]:
        return set(MigrationContext.configure(sync_connection).get_current_heads())  # type: ignore[arg-type]

    return await connection.run_sync(read)
