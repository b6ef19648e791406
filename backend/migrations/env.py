"""Alembic environment: the async template, with the URL taken from the settings."""

import asyncio
import warnings
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SAWarning
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from app import models  # registers the tables on SQLModel.metadata
from app.config import load_settings
from app.db import configure_sqlite

config = context.config

# Programmatic callers (the CLI, the tests) configure logging themselves; the
# `alembic` command line takes it from alembic.ini.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def database_url() -> str:
    """The URL given by the caller, else the one the service itself would use."""
    url = config.attributes.get("database_url") or load_settings().sqlalchemy_url
    return url if isinstance(url, str) else url.render_as_string(hide_password=False)


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Leaves out of autogenerate what only the migrations make (see MIGRATION_ONLY_OBJECTS)."""
    return not (name and (name in models.MIGRATION_ONLY_OBJECTS or name.startswith("song_search_")))


def configure(**options: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        include_object=include_object,
        # SQLite cannot ALTER most things: batch mode recreates the table instead.
        render_as_batch=database_url().startswith("sqlite"),
        compare_type=True,
        **options,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """Emit the SQL to standard output instead of running it."""
    configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction(), warnings.catch_warnings():
        # SQLite's reflection cannot read expression indexes; they are made by
        # the migrations and left out of autogenerate anyway (include_object).
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index", SAWarning)
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    if engine.dialect.name == "sqlite":
        configure_sqlite(engine)  # one transaction per run, DDL included
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_online() -> None:
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
