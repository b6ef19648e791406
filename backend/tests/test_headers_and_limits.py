"""Security headers, CORS, and the database's statement timeout."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.db import Database
from app.main import create_app
from tests.conftest import client_for, make_key
from tests.factories import make_song


@asynccontextmanager
async def client_with(settings: Settings, **changes: object) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(settings.model_copy(update=changes))
    async with LifespanManager(application), client_for(application, await make_key(application, "write")) as client:
        yield client


@pytest.mark.parametrize("path", ["/songs", "/songs/404", "/healthz", "/nowhere"])
async def test_every_answer_tells_browsers_to_do_nothing_clever_with_it(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/songs", headers={"Origin": "https://example.org"})

    assert "access-control-allow-origin" not in response.headers


async def test_cors_answers_the_origins_configured(settings: Settings) -> None:
    async with client_with(settings, cors_origins="https://example.org, https://songs.example") as client:
        preflight = await client.options(
            "/songs/1",
            headers={
                "Origin": "https://songs.example",
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "if-match, content-type, x-request-id",
            },
        )
        allowed = await client.get("/songs", headers={"Origin": "https://example.org"})
        other = await client.get("/songs", headers={"Origin": "https://elsewhere.example"})

    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://songs.example"
    assert "PATCH" in preflight.headers["access-control-allow-methods"]
    assert allowed.headers["access-control-allow-origin"] == "https://example.org"
    assert "ETag" in allowed.headers["access-control-expose-headers"]
    assert "X-Request-ID" in allowed.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in other.headers


async def test_a_refused_preflight_is_a_problem_and_replays_are_told_to_scripts(settings: Settings) -> None:
    async with client_with(settings, cors_origins="https://songs.example") as client:
        refused = await client.options(
            "/songs",
            headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
        )
        headers = {"Origin": "https://songs.example", "Idempotency-Key": "k-1"}
        await client.post("/songs", json={"name": "Halo", "artist": "Beyoncé"}, headers=headers)
        replayed = await client.post("/songs", json={"name": "Halo", "artist": "Beyoncé"}, headers=headers)
        head = await client.options(
            "/songs/1",
            headers={
                "Origin": "https://songs.example",
                "Access-Control-Request-Method": "HEAD",
                "Access-Control-Request-Headers": "authorization",
            },
        )

    assert head.status_code == 200  # every GET route answers HEAD, across origins too
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "cors-refused"
    assert refused.json()["detail"] == "This cross-origin request is refused; not allowed here: its origin."
    assert replayed.headers["idempotent-replayed"] == "true"
    assert "Idempotent-Replayed" in replayed.headers["access-control-expose-headers"].split(", ")


async def test_a_statement_stuck_on_a_lock_is_cut_short_with_a_503(
    settings: Settings, database_url: URL, db: Database
) -> None:
    if database_url.get_backend_name() != "postgresql":
        pytest.skip("SQLite has no statement timeout: its busy timeout bounds the wait for a lock")
    song = await make_song(db)
    holder = create_async_engine(database_url)
    try:
        async with holder.connect() as connection, connection.begin():
            await connection.execute(text("SELECT 1 FROM song WHERE id = :id FOR UPDATE"), {"id": song["id"]})
            async with client_with(settings, statement_timeout_ms=300) as client:
                started = time.monotonic()
                response = await asyncio.wait_for(client.patch(f"/songs/{song['id']}", json={"year": 1970}), 10)
                waited = time.monotonic() - started
    finally:
        await holder.dispose()

    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["code"] == "database-unavailable"
    assert waited < 5


async def test_an_export_waits_for_a_lock_no_longer_than_the_statement_timeout(
    settings: Settings, database_url: URL, db: Database
) -> None:
    """An export has no statement timeout (it takes as long as the catalog is large); a lock wait has one."""
    if database_url.get_backend_name() != "postgresql":
        pytest.skip("SQLite's readers take no lock: a write's does not stop an export")
    await make_song(db)
    holder = create_async_engine(database_url)
    try:
        async with holder.connect() as connection, connection.begin():
            await connection.execute(text("LOCK TABLE song IN ACCESS EXCLUSIVE MODE"))  # as a migration does
            async with client_with(settings, statement_timeout_ms=300) as client:
                started = time.monotonic()
                response = await asyncio.wait_for(client.get("/songs", headers={"Accept": "text/csv"}), 10)
                waited = time.monotonic() - started
    finally:
        await holder.dispose()

    assert response.status_code == 503
    assert response.json()["code"] == "database-unavailable"
    assert waited < 5


async def test_page_and_batch_sizes_are_settings(settings: Settings) -> None:
    async with client_with(settings, max_page_size=10, max_batch_size=2) as client:
        for number in range(12):
            await client.post("/songs", json={"name": f"Song {number}", "artist": f"Band {number}"})
        page = await client.get("/songs?limit=10")
        too_long = await client.get("/songs?limit=11")
        past_any = await client.get("/songs?limit=100001")  # past the largest the setting may be, too
        artists = await client.get("/artists?limit=11")
        described = (await client.get("/openapi.json")).json()
        batch = await client.post("/songs/batch", json=[{"name": f"Song {i}", "artist": "Band"} for i in range(3)])
        # Not asked for, the page is the service's largest, not the default 50 refused.
        unasked = [await client.get(path) for path in ("/songs", "/songs?q=song", "/artists", "/", "/ui/artists")]

    assert page.status_code == 200
    assert [response.status_code for response in unasked] == [200] * 5
    assert len(unasked[0].json()) == len(unasked[1].json()) == len(unasked[2].json()) == 10
    assert unasked[4].text.count('<tr><td><a href="/?artist=') == 10
    assert 'rel="next"' in unasked[0].headers["link"]
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["field"] == "limit"
    assert too_long.json()["errors"][0]["message"] == "must be at most 10, this service's largest page"
    assert past_any.json()["errors"][0]["message"] == "must be at most 10, this service's largest page"
    limits = [
        parameter["schema"]["maximum"]
        for operations in described["paths"].values()
        for parameter in operations.get("get", {}).get("parameters", [])
        if parameter["name"] == "limit"
    ]
    assert limits == [10, 10]  # /songs and /artists
    assert artists.status_code == 422
    assert batch.status_code == 422
    assert batch.json()["detail"] == "body songs: a batch holds at most 2 songs; this one has 3"
