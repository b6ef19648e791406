"""API keys: who may write, who may read, and keys managed by command and over HTTP."""

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from app import keys
from app.cli import cli
from tests.conftest import client_for, make_key

SONG = {"name": "Halo", "artist": "Beyoncé"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/songs", SONG),
        ("POST", "/songs/batch", [SONG]),
        ("PATCH", "/songs/1", {"year": 2008}),
        ("PUT", "/songs/1", SONG),
        ("DELETE", "/songs/1", None),
    ],
)
async def test_a_write_without_a_key_is_401(anonymous: httpx.AsyncClient, method: str, path: str, body: object) -> None:
    response = await anonymous.request(method, path, json=body)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="songbook"'
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"


async def test_reads_are_public_by_default(anonymous: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    created = (await client.post("/songs", json=SONG)).json()

    assert (await anonymous.get("/songs")).json() == [created]
    assert (await anonymous.get(f"/songs/{created['id']}")).status_code == 200
    assert (await anonymous.get("/artists")).status_code == 200


@pytest.mark.parametrize("header", ["Bearer sb_00000000_nope", "Bearer not-a-key", "Basic dXNlcjpwYXNz", "Bearer"])
async def test_a_bad_key_is_401_even_where_none_is_needed(anonymous: httpx.AsyncClient, header: str) -> None:
    response = await anonymous.get("/songs", headers={"Authorization": header})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="songbook"')


async def test_a_read_key_may_not_write(app: FastAPI) -> None:
    async with client_for(app, await make_key(app, "read", "reader")) as reader:
        response = await reader.post("/songs", json=SONG)

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert response.json()["detail"] == "The key 'reader' has the read scope; this needs write."
    assert response.headers["www-authenticate"] == (
        'Bearer realm="songbook", error="insufficient_scope", scope="write"'
    )


async def test_a_setting_makes_reads_need_a_read_key(app: FastAPI, anonymous: httpx.AsyncClient) -> None:
    app.state.settings.require_read_key = True

    refused = await anonymous.get("/songs")
    async with client_for(app, await make_key(app, "read")) as reader:
        allowed = await reader.get("/songs")
    health = await anonymous.get("/healthz")

    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert health.status_code == 200


async def test_a_setting_lets_writes_through_without_a_key_but_not_key_management(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    app.state.settings.require_write_key = False

    created = await anonymous.post("/songs", json={"name": "Help!", "artist": "The Beatles"})
    edited = await anonymous.patch(created.headers["location"], json={"year": 1965})
    keys = await anonymous.get("/keys")

    assert created.status_code == 201
    assert edited.status_code == 200
    assert keys.status_code == 401


async def test_an_admin_key_manages_keys_over_http(app: FastAPI, client: httpx.AsyncClient) -> None:
    async with client_for(app, await make_key(app, "admin", "root")) as admin:
        created = await admin.post("/keys", json={"name": "importer", "scope": "write"})
        key = created.json()["key"]
        listed = await admin.get("/keys")
        async with client_for(app, key) as importer:
            before = await importer.post("/songs", json=SONG)
            revoked = await admin.delete(f"/keys/{created.json()['id']}")
            after = await importer.post("/songs", json={"name": "Creep", "artist": "Radiohead"})
        again = await admin.post("/keys", json={"name": "importer", "scope": "read"})
    by_writer = await client.get("/keys")

    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"  # the answer holds the secret
    assert key.startswith(f"sb_{created.json()['prefix']}_")
    assert {entry["name"] for entry in listed.json()} >= {"root", "importer"}
    assert all("key" not in entry and "secret_hash" not in entry for entry in listed.json())
    assert before.status_code == 201
    assert revoked.json()["revoked_at"] is not None
    assert after.status_code == 401
    assert again.status_code == 409
    assert by_writer.status_code == 403


async def test_a_key_revoked_by_another_process_is_refused_within_seconds(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another instance, or `songbook keys revoke`: this process learns it when its belief expires.
    monkeypatch.setattr(keys, "KNOWN_FOR_SECONDS", 0.3)
    key = await make_key(app, "write", "elsewhere")
    async with client_for(app, key) as writer:
        before = await writer.get("/songs")
        # While the key is believed, its secret is still checked: the prefix alone is not enough.
        wrong_secret = await writer.get("/songs", headers={"Authorization": f"Bearer {key[:-2]}xx"})
        async with app.state.database.engine.begin() as connection:
            await connection.execute(text("UPDATE api_key SET revoked_at = CURRENT_TIMESTAMP WHERE name = 'elsewhere'"))
        believed = await writer.get("/songs")
        await asyncio.sleep(0.4)
        after = await writer.get("/songs")

    assert (before.status_code, believed.status_code, after.status_code) == (200, 200, 401)
    assert wrong_secret.status_code == 401


async def test_keys_are_stored_only_as_hashes_and_record_their_last_use(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    key = await make_key(app, "write", "hashed")
    async with client_for(app, key) as writer:
        await writer.post("/songs", json=SONG)
    await app.state.keyring.settle()
    async with app.state.database.engine.connect() as connection:
        row = (await connection.execute(text("SELECT * FROM api_key WHERE name = 'hashed'"))).one()

    assert key not in " ".join(str(value) for value in row)
    assert row.secret_hash != key
    assert row.last_used_at is not None


@asynccontextmanager
async def holding_the_key_for_writes(url: URL, name: str) -> AsyncIterator[None]:
    """Another writer holding what recording the key's use needs: SQLite's write lock, or the key's row."""
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(str(url.database), isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield
            connection.execute("COMMIT")
        finally:
            connection.close()
        return
    engine = create_async_engine(url)
    try:
        async with engine.begin() as holder:
            await holder.execute(text("SELECT 1 FROM api_key WHERE name = :name FOR UPDATE"), {"name": name})
            yield
    finally:
        await engine.dispose()


async def test_recording_a_keys_use_does_not_hold_its_request(app: FastAPI, database_url: URL) -> None:
    key = await make_key(app, "read", "patient")
    async with holding_the_key_for_writes(database_url, "patient"), client_for(app, key) as reader:
        started = time.monotonic()
        response = await reader.get("/songs")
        waited = time.monotonic() - started
    await app.state.keyring.settle()
    async with app.state.database.engine.connect() as connection:
        used = (await connection.execute(text("SELECT last_used_at FROM api_key WHERE name = 'patient'"))).scalar()

    assert response.status_code == 200
    assert waited < 2  # not the 5 s SQLite's writers wait for the lock, nor PostgreSQL's statement timeout
    assert used is not None  # recorded once the lock was let go


async def test_no_key_appears_in_the_logs(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    key = await make_key(app, "read")
    caplog.set_level(logging.DEBUG)
    async with client_for(app, key) as reader:
        await reader.post("/songs", json=SONG)
        await reader.get("/songs")
    async with client_for(app, key + "x") as mistyped:
        await mistyped.get("/songs")

    assert caplog.records  # the requests were logged at all
    assert key not in caplog.text


def test_a_key_named_as_another_keys_id_is_revoked_by_what_tells_them_apart(catalog: URL) -> None:
    runner = CliRunner()
    for name in ["alice", "1", "99"]:
        assert runner.invoke(cli, ["keys", "create", "--name", name, "--scope", "write"]).exit_code == 0

    ambiguous = runner.invoke(cli, ["keys", "revoke", "1"])  # key 2's name, key 1's id
    by_name = runner.invoke(cli, ["keys", "revoke", "99"])  # no key has id 99
    odd = [runner.invoke(cli, ["keys", "revoke", value]) for value in ["\u00b2", "9" * 20]]
    listed = runner.invoke(cli, ["keys", "list"]).stdout

    assert ambiguous.exit_code == 1
    assert "'1' is the name of key 2 and the id of key 1" in ambiguous.stderr
    [revoked] = [line for line in listed.splitlines() if "revoked" in line]
    assert revoked.split("\t")[:2] == ["3", "99"]  # alice and "1" are active still
    assert by_name.exit_code == 0
    assert "Revoked key 3 ('99')" in by_name.stdout
    for result in odd:
        assert result.exit_code == 1
        assert "no key is named" in result.stderr
        assert "Traceback" not in result.output


def test_keys_by_command(catalog: URL) -> None:
    runner = CliRunner()

    created = runner.invoke(cli, ["keys", "create", "--name", "laptop", "--scope", "write"])
    duplicate = runner.invoke(cli, ["keys", "create", "--name", "laptop", "--scope", "read"])
    listed = runner.invoke(cli, ["keys", "list"])
    revoked = runner.invoke(cli, ["keys", "revoke", "laptop"])
    missing = runner.invoke(cli, ["keys", "revoke", "desktop"])

    key = created.stdout.strip()
    assert created.exit_code == 0
    assert key.startswith("sb_")
    assert "shown this once" in created.stderr
    assert duplicate.exit_code == 1
    assert "A key is named 'laptop' already." in duplicate.stderr
    assert "laptop\twrite\tsb_" in listed.stdout
    assert key not in listed.stdout
    assert revoked.exit_code == 0
    assert "revoked" in runner.invoke(cli, ["keys", "list"]).stdout
    assert missing.exit_code == 1
