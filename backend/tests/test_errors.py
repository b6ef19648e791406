"""Every error, the service's and the framework's, is one problem-details shape."""

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.db import Database
from app.main import create_app
from tests.factories import make_song

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = response.json()
    assert problem.keys() >= PROBLEM_KEYS
    assert (problem["status"], problem["code"], problem["type"]) == (status, code, f"urn:songbook:problem:{code}")
    return problem


async def test_unknown_path_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not-found")


async def test_wrong_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/songs")

    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET, HEAD, POST"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_the_batch_route_takes_only_post(client: httpx.AsyncClient, method: str) -> None:
    """Not a song whose id is `batch`: the route is there, for another method."""
    response = await client.request(method, "/songs/batch", json={"name": "A", "artist": "B"})

    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/songs", "/songs?q=beatles", "/artists", "/healthz", "/", "/ui/artists"])
async def test_head_answers_what_get_answers_without_the_body(anonymous: httpx.AsyncClient, path: str) -> None:
    got = await anonymous.get(path)
    head = await anonymous.head(path)

    assert got.status_code == 200
    assert (head.status_code, head.content) == (200, b"")
    for header in ("content-type", "content-length", "etag", "link", "cache-control"):
        assert head.headers.get(header) == got.headers.get(header), header


async def test_head_of_a_song_has_its_etag_and_heeds_if_none_match(client: httpx.AsyncClient) -> None:
    song = (await client.post("/songs", json={"name": "Halo", "artist": "Beyoncé"})).json()

    head = await client.head(f"/songs/{song['id']}")
    unchanged = await client.head(f"/songs/{song['id']}", headers={"If-None-Match": head.headers["etag"]})
    missing = await client.head("/songs/999999")

    assert (head.status_code, head.headers["etag"], head.content) == (200, '"1"', b"")
    assert unchanged.status_code == 304
    assert missing.status_code == 404
    # Described once, as GET: the OpenAPI document has no HEAD operations.
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert paths["/songs/{song_id}"].keys() == {"get", "put", "patch", "delete"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"name": "A",', "The request body is not valid JSON."),
        (
            '{"name": "Café", "artist": "B"}'.encode("latin-1"),
            "The request body is not valid JSON: it is not UTF-8 text.",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "The request body is not valid JSON: it is nested too deeply."),
        (
            b'{"name": "A", "artist": "B", "year": ' + b"1" * 5000 + b"}",
            "The request body is not valid JSON: a number in it has more digits than Python reads (4,300).",
        ),
    ],
)
@pytest.mark.parametrize("path", ["/songs", "/songs/batch"])
async def test_malformed_json_is_a_400_problem(client: httpx.AsyncClient, path: str, body: bytes, reason: str) -> None:
    response = await client.post(path, content=body, headers={"content-type": "application/json"})

    assert assert_problem(response, 400, "malformed-json")["detail"] == reason


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_body_that_is_not_declared_json_is_a_415_problem(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}

    response = await client.post("/songs", content=b'{"name": "A", "artist": "B"}', headers=headers)

    assert_problem(response, 415, "unsupported-media-type")
    assert (await client.get("/songs")).json() == []


async def test_json_array_instead_of_object_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/songs", json=[{"name": "A", "artist": "B"}])

    assert_problem(response, 422, "validation-failed")


@pytest.mark.parametrize(
    ("path", "error_type"),
    [
        ("/songs/abc", "int_parsing"),
        ("/songs/0", "greater_than_equal"),
        ("/songs/2147483648", "less_than_equal"),
        # Another way to write an id is not that id (int() reads each of them as one).
        ("/songs/1_0", "int_parsing"),
        ("/songs/01", "int_parsing"),
        ("/songs/%2B1", "int_parsing"),
        ("/songs/1.0", "int_parsing"),
        ("/songs/%D9%A1", "int_parsing"),  # an Arabic-Indic one
    ],
)
async def test_bad_song_id_is_a_422_problem(client: httpx.AsyncClient, path: str, error_type: str) -> None:
    problem = assert_problem(await client.get(path), 422, "validation-failed")

    errors = problem["errors"]
    assert isinstance(errors, list)
    assert [(error["location"], error["field"], error["type"]) for error in errors] == [("path", "song_id", error_type)]


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=ten", "cursor=not-a-cursor", "cursor=WyJ4Il0"])
async def test_bad_paging_parameter_is_a_422_naming_it(client: httpx.AsyncClient, query: str) -> None:
    problem = assert_problem(await client.get(f"/songs?{query}"), 422, "validation-failed")

    errors = problem["errors"]
    assert isinstance(errors, list)
    assert [(error["location"], error["field"]) for error in errors] == [("query", query.split("=")[0])]


@pytest.fixture
def small_body_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_body_bytes": 1024})


async def _app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from asgi_lifespan import LifespanManager

    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://songbook.test") as client:
            yield client


@pytest.fixture
async def small_body_client(small_body_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _app_client(small_body_settings):
        yield client


async def test_body_over_the_limit_is_a_413_problem(small_body_client: httpx.AsyncClient) -> None:
    response = await small_body_client.post("/songs", json={"name": "x" * 2000, "artist": "B"})

    assert_problem(response, 413, "payload-too-large")


async def test_a_declared_body_over_the_limit_is_refused_before_the_route_runs(
    small_body_settings: Settings, db: Database
) -> None:
    # A DELETE reads no body: were it let through, the song would go.
    song = f"/songs/{(await make_song(db))['id']}"
    async for small_body_client in _app_client(small_body_settings.model_copy(update={"require_write_key": False})):
        refused = await small_body_client.request("DELETE", song, content=b"x" * 2000)

        kept = await small_body_client.get(song)

    assert_problem(refused, 413, "payload-too-large")
    assert kept.status_code == 200


async def test_streamed_body_over_the_limit_is_a_413_problem(small_body_client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'", "artist": "B"}'

    response = await small_body_client.post("/songs", content=chunks(), headers={"content-type": "application/json"})

    assert_problem(response, 413, "payload-too-large")


async def test_unexpected_error_is_a_500_problem_that_leaks_nothing(app: FastAPI, client: httpx.AsyncClient) -> None:
    async def explode() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    app.add_api_route("/explode", explode)

    problem = assert_problem(await client.get("/explode"), 500, "internal-error")

    assert "hunter2" not in str(problem)
    assert "RuntimeError" not in str(problem)


async def test_a_500_is_answered_as_every_answer_is_and_goes_no_further(
    settings: Settings, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from asgi_lifespan import LifespanManager

    changes = {"cors_origins": "https://shop.example", "log_format": "json", "access_log": True}
    app = create_app(settings.model_copy(update=changes))

    async def explode() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/explode", explode)
    async with LifespanManager(app):
        # raise_app_exceptions: an error the app let out would fail the request here (a server logs it again).
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://songbook.test") as client:
            response = await client.get("/explode", headers={"Origin": "https://shop.example", "X-Request-ID": "r-500"})

    assert_problem(response, 500, "internal-error")
    assert response.headers["access-control-allow-origin"] == "https://shop.example"  # a browser may read it
    assert "X-Request-ID" in response.headers["access-control-expose-headers"]
    assert response.headers["x-request-id"] == "r-500"
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert [record.getMessage() for record in tracebacks] == ["unhandled error on GET /explode"]
    [access] = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"/explode"' in line]
    assert (access["status"], access["bytes"]) == (500, len(response.content))


@pytest.fixture
async def unreachable_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # Port 9 (discard) has no PostgreSQL: connections are refused at once.
    unreachable = settings.model_copy(update={"database_url": "postgresql://songbook@127.0.0.1:9/songbook"})
    async for client in _app_client(unreachable):
        yield client


@pytest.mark.parametrize("path", ["/songs", "/songs/1", "/readyz"])
async def test_unreachable_database_is_a_503_problem_with_retry_after(
    unreachable_client: httpx.AsyncClient, path: str
) -> None:
    response = await unreachable_client.get(path)

    assert_problem(response, 503, "database-unavailable")
    assert int(response.headers["retry-after"]) > 0


async def test_liveness_does_not_need_the_database(unreachable_client: httpx.AsyncClient) -> None:
    response = await unreachable_client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
