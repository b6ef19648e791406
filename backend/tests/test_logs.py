"""Logs, as a real server writes them: JSON lines or console lines, one record per request, tied to its id."""

import io
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from app.cli import cli
from app.logs import AccessLog, _renderer
from tests.server import Server, serving

JSON_LOGS = {"SONGBOOK_LOG_FORMAT": "json"}


def records(server: Server) -> list[dict[str, Any]]:
    """Every line the server wrote, each parsed as one JSON object."""
    parsed = [json.loads(line) for line in server.lines()]
    assert all(isinstance(record, dict) for record in parsed)
    return parsed


def access(server: Server, request_id: str) -> dict[str, Any]:
    [record] = [r for r in records(server) if r.get("logger") == "songbook.access" and r["request_id"] == request_id]
    return record


def new_key(scope: str = "write") -> str:
    result = CliRunner().invoke(cli, ["keys", "create", "--name", "logged", "--scope", scope])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_one_json_record_per_request_with_its_fields(catalog: URL, tmp_path: Path) -> None:
    key = new_key()
    with serving(tmp_path, JSON_LOGS) as server:
        created = httpx.post(
            f"{server.base}/songs",
            json={"name": "Yesterday", "artist": "The Beatles"},
            headers={"Authorization": f"Bearer {key}", "Cookie": "session=s3cret-cookie", "X-Request-ID": "mine-1"},
        )
        read = httpx.get(f"{server.base}/songs/{created.json()['id']}")

    record = access(server, "mine-1")
    assert created.status_code == 201
    assert record["event"] == "request"
    assert record["level"] == "info"
    assert record["timestamp"].endswith("Z")
    assert (record["method"], record["route"], record["status"]) == ("POST", "/songs", 201)
    assert record["bytes"] == len(created.content)
    assert 0 < record["duration_ms"] < 10_000
    assert record["client"] == "127.0.0.1"
    assert record["api_key_name"] == "logged"
    assert isinstance(record["api_key_id"], int)
    reading = access(server, read.headers["X-Request-ID"])
    assert reading["route"] == "/songs/{song_id}"
    assert "api_key_id" not in reading
    everything = server.log.read_text()
    assert key not in everything
    # Not even part of it: the secret's start (itself URL-safe base64, which may hold "_").
    assert key.removeprefix("sb_").split("_", 1)[1][:12] not in everything
    assert "s3cret-cookie" not in everything
    assert "authorization" not in everything.lower()


def test_uvicorns_records_are_json_too(catalog: URL, tmp_path: Path) -> None:
    with serving(tmp_path, JSON_LOGS) as server:
        probes = [httpx.get(f"{server.base}/readyz").status_code for _ in range(3)]

    records = records_of_stopped(tmp_path)
    started = [r for r in records if r.get("logger") == "uvicorn.error"]
    assert any("Application startup complete" in r["event"] for r in started)
    assert all({"timestamp", "level", "event"} <= set(r) for r in started)
    # A probe reads the schema's revision: its record is the access log's, not Alembic's two lines.
    assert probes == [200, 200, 200]
    assert [r["event"] for r in records if r.get("logger", "").startswith("alembic")] == []


def records_of_stopped(tmp_path: Path) -> list[dict[str, Any]]:
    [log] = tmp_path.glob("server-*.log")
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_sql_echo_comes_out_as_json(catalog: URL, tmp_path: Path) -> None:
    with serving(tmp_path, JSON_LOGS | {"SONGBOOK_SQL_ECHO": "true"}) as server:
        listed = httpx.get(f"{server.base}/songs", params={"q": "yesterday"})

    sql = [r for r in records(server) if r.get("logger") == "sqlalchemy.engine.Engine"]
    assert listed.status_code == 200
    assert any(r.get("request_id") == listed.headers["X-Request-ID"] for r in sql)


async def _rename_artist_column(url: URL, old: str, new: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"ALTER TABLE song RENAME COLUMN {old} TO {new}"))
    finally:
        await engine.dispose()


async def test_a_failing_statement_is_logged_with_the_request_id(catalog: URL, tmp_path: Path) -> None:
    """A schema the code does not expect: PostgreSQL's error is a 500 with its traceback, SQLite's a 503."""
    with serving(tmp_path, JSON_LOGS) as server:
        await _rename_artist_column(catalog, "artist", "artist_gone")
        try:
            async with httpx.AsyncClient() as client:
                failed = await client.get(f"{server.base}/songs/1", headers={"X-Request-ID": "the-broken-one"})
        finally:
            await _rename_artist_column(catalog, "artist_gone", "artist")

    assert failed.status_code in (500, 503)
    assert failed.headers["X-Request-ID"] == "the-broken-one"
    assert failed.json()["request_id"] == "the-broken-one"
    written = [r for r in records(server) if r.get("request_id") == "the-broken-one"]
    [told] = [r for r in written if r.get("logger") == "app.errors"]
    assert told["level"] == ("error" if failed.status_code == 500 else "warning")
    if failed.status_code == 500:
        # The whole traceback in one record, one line.
        assert "Traceback (most recent call last)" in told["exception"]
        assert "artist" in told["exception"]
    else:
        assert told["event"] == "database unavailable: OperationalError: no such column: song.artist"
    assert access(server, "the-broken-one")["status"] == failed.status_code


def test_the_access_log_can_be_turned_off(catalog: URL, tmp_path: Path) -> None:
    with serving(tmp_path, JSON_LOGS | {"SONGBOOK_ACCESS_LOG": "false"}) as server:
        httpx.get(f"{server.base}/songs")

    assert records(server)  # uvicorn's still are
    assert not [r for r in records(server) if r.get("logger") == "songbook.access"]


def test_console_lines_for_a_person(catalog: URL, tmp_path: Path) -> None:
    with serving(tmp_path, {}) as server:
        read = httpx.get(f"{server.base}/songs/42", headers={"X-Request-ID": "console-1"})

    [line] = [line for line in server.lines() if "request_id=console-1" in line]
    assert read.status_code == 404
    assert line.split()[1:3] == ["[info", "]"]
    assert "route=/songs/{song_id}" in line
    assert "status=404" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_a_traceback_on_the_console_shows_no_local_values() -> None:
    def check(key: str) -> None:
        raise RuntimeError("refused")

    key = "sb_" + "x" * 8  # made here: the traceback's lines of code do not hold it
    try:
        check(key)
    except RuntimeError:
        line = _renderer("console")(None, "error", {"event": "failed", "exc_info": sys.exc_info()})

    assert "RuntimeError: refused" in str(line)
    assert "check(key)" in str(line)  # the frames are there, not what their variables held
    assert key not in str(line)


def test_a_running_servers_records_come_out_within_a_moment(catalog: URL, tmp_path: Path) -> None:
    with serving(tmp_path, JSON_LOGS) as server:
        read = httpx.get(f"{server.base}/songs")
        deadline = time.monotonic() + 2
        while f'"request_id":"{read.headers["X-Request-ID"]}"' not in server.log.read_text():
            assert time.monotonic() < deadline, "the access record was not written within 2 s"
            time.sleep(0.02)


def test_the_access_log_keeps_to_the_log_level() -> None:
    stream = io.StringIO()
    access_log = AccessLog("warning", "json", stream)

    access_log.write("info", {"event": "request", "status": 200})
    access_log.write("error", {"event": "request", "status": 500})

    [line] = stream.getvalue().splitlines()  # outside an event loop, written at once
    assert json.loads(line)["status"] == 500


def test_an_access_record_is_written_as_structlogs_renderer_writes_the_others() -> None:
    stream = io.StringIO()
    record = {"event": "request", "status": 200, "duration_ms": 1.5, "client": None, "aborted": True}
    AccessLog("info", "json", stream).write("info", dict(record))

    [line] = stream.getvalue().splitlines()
    written = json.loads(line)
    assert line == _renderer("json")(None, "info", dict(written))  # orjson's own output, key for key
    assert written == {**record, "level": "info", "timestamp": written["timestamp"]}
    # As structlog's TimeStamper(fmt="iso", utc=True) writes it, to the microsecond.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", written["timestamp"])
    assert abs(datetime.fromisoformat(written["timestamp"]) - datetime.now(UTC)) < timedelta(seconds=5)
