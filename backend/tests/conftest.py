"""Fixtures: every test that needs a database runs on SQLite, and on PostgreSQL when
TEST_DATABASE_URL is set; each test starts from an empty catalog."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from app import keys, schema
from app.config import Settings, async_url
from app.db import Database
from app.main import create_app
from app.models import ApiKeyCreate, Scope
from tests.catalog import empty, empty_catalog

BACKENDS = ["sqlite", "postgresql"]
# `cluster`: a PostgreSQL of a test's own; `formation`: a highly available one (pg_auto_failover)
pytest_plugins = ["tests.pgcluster", "tests.formation"]


def postgres_base_url() -> URL:
    raw = os.environ.get("TEST_DATABASE_URL")
    if not raw:
        pytest.skip("PostgreSQL tests need TEST_DATABASE_URL")
    return async_url(raw)


async def admin(url: URL, statement: str) -> None:
    """Runs `statement` on the server of `url`, outside a transaction (CREATE DATABASE)."""
    engine = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """A database of its own, with no tables at all: for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield async_url(f"sqlite:///{tmp_path / 'empty.db'}")
        return
    base = postgres_base_url()
    name = f"{base.database}_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(base, f'CREATE DATABASE "{name}"'))
    yield base.set(database=name)
    asyncio.run(admin(base, f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> URL:
    """The migrated database of this test session, one per backend."""
    if request.param == "sqlite":
        url = async_url(f"sqlite:///{tmp_path_factory.mktemp('db') / 'songbook.db'}")
    else:
        url = postgres_base_url()
    schema.upgrade(url)
    return url


@pytest.fixture
def settings(database_url: URL, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url.render_as_string(hide_password=False), data_dir=tmp_path)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The real application, its lifespan run, over an empty catalog."""
    application = create_app(settings)
    async with LifespanManager(application):
        await empty_catalog(application.state.database.engine)
        yield application


@pytest.fixture
def catalog(database_url: URL, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> URL:
    """For tests of commands: the migrated database, emptied, named by DATABASE_URL."""

    empty(database_url)
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.chdir(tmp_path)
    return database_url


async def make_key(app: FastAPI, scope: Scope, name: str | None = None) -> str:
    key_in = ApiKeyCreate(name=name or f"test {scope} {uuid.uuid4().hex[:8]}", scope=scope)
    return (await keys.create_key(db=app.state.database, key_in=key_in)).key


@asynccontextmanager
async def client_for(app: FastAPI, key: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app, sending `key` if given."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://songbook.test", headers=headers) as client:
        yield client


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client with a write key, as most programs that use the API have."""
    async with client_for(app, await make_key(app, "write")) as client:
        yield client


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client without a key."""
    async with client_for(app, None) as client:
        yield client


@pytest.fixture
def db(app: FastAPI) -> Database:
    """The application's own way to its database, for factories and checks."""
    database: Database = app.state.database
    return database
