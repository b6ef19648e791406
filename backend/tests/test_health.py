"""Liveness and readiness."""

import asyncio
import os
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from app import schema
from app.config import Settings
from app.main import create_app


async def test_healthz_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_answers_ok_on_a_migrated_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def _readyz(database_url: URL) -> httpx.Response:
    app = create_app(Settings(database_url=database_url.render_as_string(hide_password=False)))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://songbook.test") as client:
            return await client.get("/readyz")


async def test_readyz_is_a_503_on_a_database_never_migrated(empty_database: URL) -> None:
    response = await _readyz(empty_database)

    assert response.status_code == 503
    assert response.json()["code"] == "database-unavailable"
    assert "no revision" in response.json()["detail"]


async def test_readyz_is_a_503_on_a_database_behind_the_latest_migration(empty_database: URL) -> None:
    first_revision = "7fccabe9f34a"
    # Alembic's env.py runs an event loop of its own: keep it off this test's loop.
    await asyncio.to_thread(schema.upgrade, empty_database, first_revision)

    response = await _readyz(empty_database)

    assert response.status_code == 503
    assert first_revision in response.json()["detail"]


async def test_readyz_answers_ok_on_a_database_a_newer_version_migrated(empty_database: URL) -> None:
    # `songbook migrate` of the next version runs before its instances start: this version's keep serving.
    await asyncio.to_thread(schema.upgrade, empty_database)
    engine = create_async_engine(empty_database)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = 'f0f0f0f0f0f0'"))
        response = await _readyz(empty_database)
    finally:
        await engine.dispose()

    assert response.status_code == 200, response.text


async def test_readyz_is_a_503_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    corrupt = tmp_path / "songbook.db"
    corrupt.write_bytes(os.urandom(8192))
    settings = Settings(database_url=f"sqlite+aiosqlite:///{corrupt}", data_dir=tmp_path)
    app = create_app(settings)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://songbook.test") as client,
    ):
        response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["code"] == "database-unavailable"
