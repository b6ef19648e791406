"""Fixtures: every test that needs a database runs on SQLite, and on PostgreSQL when
TEST_DATABASE_URL is set; each test starts from an empty catalog."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from app import schema
from app.config import Settings, async_url
from app.main import create_app
from tests.catalog import empty, empty_catalog

BACKENDS = ["sqlite", "postgresql"]


def postgres_base_url() -> URL:
    raw = os.environ.get("TEST_DATABASE_URL")
    if not raw:
        pytest.skip("PostgreSQL tests need TEST_DATABASE_URL")
    return async_url(raw)


async def _admin(url: URL, statement: str) -> None:
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
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    yield base.set(database=name)
    asyncio.run(_admin(base, f'DROP DATABASE "{name}" WITH (FORCE)'))


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
        await empty_catalog(application.state.engine)
        yield application


@pytest.fixture
def catalog(database_url: URL, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> URL:
    """For tests of commands: the migrated database, emptied, named by DATABASE_URL."""

    empty(database_url)
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.chdir(tmp_path)
    return database_url


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://songbook.test") as client:
        yield client


@pytest.fixture
async def session(app: FastAPI) -> AsyncIterator[AsyncSession]:
    async with app.state.sessionmaker() as session:
        yield session
