"""PostgreSQL made under a collation other than C (en_US and ICU's en-US are common defaults): the service
answers as it does on SQLite, whose comparisons are by code point."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app import schema
from app.config import Settings
from app.main import create_app
from tests.conftest import admin, client_for, postgres_base_url
from tests.factories import make_song


@pytest.fixture
async def app_under_icu(tmp_path: Path) -> AsyncIterator[FastAPI]:
    """The app over a migrated database of its own, whose collation is ICU's en-US."""
    base = postgres_base_url()
    url = base.set(database=f"{base.database}_icu_{uuid.uuid4().hex[:8]}")
    await admin(base, f"CREATE DATABASE \"{url.database}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'")
    try:
        await asyncio.to_thread(schema.upgrade, url)
        application = create_app(Settings(database_url=url.render_as_string(hide_password=False), data_dir=tmp_path))
        async with LifespanManager(application):
            yield application
    finally:
        await admin(base, f'DROP DATABASE "{url.database}" WITH (FORCE)')


async def test_an_artist_is_spelled_as_on_sqlite(app_under_icu: FastAPI) -> None:
    for number, artist in enumerate(("Abba Tribute", "abba tribute", "ABBA TRIBUTE")):
        await make_song(app_under_icu.state.database, name=f"Song {number}", artist=artist)
    async with client_for(app_under_icu, None) as client:
        response = await client.get("/artists")

    assert response.json() == [{"name": "ABBA TRIBUTE", "songs": 3}]  # the first by code point
