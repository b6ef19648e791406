"""Request ids: kept when the client's is sane, else made; on every answer, in every problem body."""

import asyncio
import contextlib
import io
import json
import re

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from app import logs, songs
from app.db import Database
from app.telemetry import RequestTelemetry
from tests.conftest import client_for, make_key
from tests.factories import make_song

MADE = re.compile(r"[0-9a-f]{32}")


async def test_a_sane_id_is_kept_on_the_answer_and_in_the_problem(client: httpx.AsyncClient) -> None:
    found = await client.get("/songs", headers={"X-Request-ID": "checkout-42/retry=1"})
    missing = await client.get("/songs/999999", headers={"X-Request-ID": "trace:abc/def"})

    assert found.headers["X-Request-ID"] == "checkout-42/retry=1"
    assert missing.status_code == 404
    assert missing.headers["X-Request-ID"] == "trace:abc/def"
    assert missing.json()["request_id"] == "trace:abc/def"


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "caf\u00e9".encode().decode("latin-1"), "tab\there", "two words", ""],
    ids=["too-long", "not-ascii", "control", "space", "empty"],
)
async def test_an_id_that_is_not_sane_is_replaced(client: httpx.AsyncClient, sent: str) -> None:
    response = await client.get("/songs", headers={b"X-Request-ID": sent.encode("latin-1")})

    assert MADE.fullmatch(response.headers["X-Request-ID"])


async def test_the_longest_sane_id_is_kept(client: httpx.AsyncClient) -> None:
    sent = "a" * 128
    assert (await client.get("/songs", headers={"X-Request-ID": sent})).headers["X-Request-ID"] == sent


async def test_without_one_each_request_gets_its_own(client: httpx.AsyncClient) -> None:
    ids = [(await client.get("/healthz")).headers["X-Request-ID"] for _ in range(20)]

    assert all(MADE.fullmatch(request_id) for request_id in ids)
    assert len(set(ids)) == 20


async def test_every_kind_of_answer_carries_it(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db)
    read = await client.get(f"/songs/{song['id']}")
    answers = {
        "not modified": await client.get(f"/songs/{song['id']}", headers={"If-None-Match": read.headers["ETag"]}),
        "streamed export": await client.get("/songs", headers={"Accept": "text/csv"}),
        "invalid": await client.post("/songs", json={"name": ""}),
        "wrong method": await client.put("/songs", json={}),
        "too large": await client.post(
            "/songs", content=b"x" * 2_000_000, headers={"Content-Type": "application/json"}
        ),
        "unknown path": await client.get("/nothing/here"),
        "docs": await client.get("/docs"),
        "created": await client.post("/songs", json={"name": "Help!", "artist": "The Beatles"}),
    }

    assert {name: answer.status_code for name, answer in answers.items()} == {
        "not modified": 304,
        "streamed export": 200,
        "invalid": 422,
        "wrong method": 405,
        "too large": 413,
        "unknown path": 404,
        "docs": 200,
        "created": 201,
    }
    for name, answer in answers.items():
        assert MADE.fullmatch(answer.headers.get("X-Request-ID", "")), name
        if answer.status_code >= 400:
            assert answer.json()["request_id"] == answer.headers["X-Request-ID"], name


async def test_an_unhandled_error_answers_500_with_the_id(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(**_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(songs, "get_song", broken)
    async with client_for(app, None) as client:
        response = await client.get("/songs/1", headers={"X-Request-ID": "the-failing-one"})

    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "the-failing-one"
    assert response.json()["request_id"] == "the-failing-one"
    assert "a bug" not in response.text


def test_the_problem_schema_has_the_request_id(app: FastAPI) -> None:
    problem = app.openapi()["components"]["schemas"]["Problem"]

    assert "request_id" in problem["required"]
    assert problem["properties"]["request_id"]["type"] == "string"


async def test_a_request_keeps_no_id_after_it_ends(client: httpx.AsyncClient) -> None:
    # The test's task is the one that served it (httpx calls the app in it): nothing is left behind.
    await client.get("/songs/999999")

    assert logs.request_id() is None


class Recorder:
    """An ASGI app that answers as told, around which the middleware is tried directly."""

    def __init__(self, fail: type[BaseException] | None, after_start: bool) -> None:
        self.fail = fail
        self.after_start = after_start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        if self.fail is not None:
            raise self.fail()


async def serve_once(app: Recorder) -> dict[str, object]:
    stream = io.StringIO()
    access_log = logs.AccessLog("info", "json", stream)
    middleware = RequestTelemetry(app, access_log=access_log, metrics=True)
    scope = {"type": "http", "method": "GET", "path": "/x", "root_path": "", "headers": [], "client": ("10.0.0.1", 1)}

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    with contextlib.suppress(BaseException):
        await middleware(scope, receive, send)
    access_log.flush()
    record: dict[str, object] = json.loads(stream.getvalue())
    return record


async def test_a_client_gone_before_the_answer_is_499_not_a_server_error() -> None:
    record = await serve_once(Recorder(asyncio.CancelledError, after_start=False))

    assert (record["status"], record["level"]) == (499, "info")


async def test_a_failure_after_the_status_was_sent_is_logged_as_one() -> None:
    record = await serve_once(Recorder(RuntimeError, after_start=True))

    assert (record["status"], record["level"], record["aborted"]) == (200, "error", True)
    assert record["bytes"] == len(b"partial")


async def test_a_client_gone_while_it_sends_its_body_is_499(app: FastAPI) -> None:
    key = await make_key(app, "write")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/songs",
        "raw_path": b"/songs",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"songbook.test"),
            (b"content-type", b"application/json"),
            (b"content-length", b"1000"),
            (b"authorization", f"Bearer {key}".encode()),
        ],
        "client": ("10.0.0.1", 1),
        "server": ("songbook.test", 80),
    }
    # Part of the body, then the connection closes, as uvicorn tells it.
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"name": "Ha', "more_body": True},
        {"type": "http.disconnect"},
    ]
    arriving = iter(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        return next(arriving, {"type": "http.disconnect"})

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)

    # The status the access log and the metrics record: not the service's error, nor the client's bad body.
    assert (sent[0]["type"], sent[0]["status"]) == ("http.response.start", 499)
