"""The OpenAPI description documents every route's answers, errors included."""

import re
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import create_app

OPERATIONS = [
    ("/songs", "get"),
    ("/artists", "get"),
    ("/songs", "post"),
    ("/songs/batch", "post"),
    ("/songs/{song_id}", "get"),
    ("/songs/{song_id}", "patch"),
    ("/songs/{song_id}", "put"),
    ("/songs/{song_id}", "delete"),
    ("/keys", "post"),
    ("/keys", "get"),
    ("/keys/{key_id}", "delete"),
    ("/healthz", "get"),
    ("/readyz", "get"),
]


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return create_app(Settings(database_url="sqlite://")).openapi()


def test_every_operation_is_described(openapi: dict[str, Any]) -> None:
    described = {(path, method) for path, item in openapi["paths"].items() for method in item}

    assert described == set(OPERATIONS)


@pytest.mark.parametrize(("path", "method"), [op for op in OPERATIONS if op[0] != "/healthz"])
def test_errors_are_documented_as_problem_details(openapi: dict[str, Any], path: str, method: str) -> None:
    responses = openapi["paths"][path][method]["responses"]
    errors = {status: response for status, response in responses.items() if status[0] in "45"}

    assert any(status.startswith("2") for status in responses)
    assert errors
    for response in errors.values():
        assert response["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/songs", "post", {"201", "400", "409", "413", "415", "422"}),
        ("/songs/batch", "post", {"200", "400", "409", "413", "415", "422"}),
        ("/songs/{song_id}", "get", {"200", "404", "422"}),
        ("/songs/{song_id}", "get", {"200", "304", "404", "422"}),
        ("/songs/{song_id}", "patch", {"200", "404", "409", "412", "422", "428"}),
        ("/songs/{song_id}", "put", {"200", "404", "409", "412", "422", "428"}),
        ("/songs/{song_id}", "delete", {"204", "404", "412", "428"}),
        ("/readyz", "get", {"200", "503"}),
    ],
)
def test_the_statuses_each_route_answers_are_documented(
    openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    assert statuses <= openapi["paths"][path][method]["responses"].keys()


@pytest.mark.parametrize("method", ["get", "patch", "put", "delete"])
def test_a_songs_id_is_described_with_its_bounds(openapi: dict[str, Any], method: str) -> None:
    (song_id,) = [p for p in openapi["paths"]["/songs/{song_id}"][method]["parameters"] if p["name"] == "song_id"]

    assert song_id["schema"] | {"minimum": 1, "maximum": 2**31 - 1} == song_id["schema"]
    assert not {"ge", "le"} & set(song_id["schema"])  # not JSON Schema's words


def test_the_listing_documents_its_export_formats(openapi: dict[str, Any]) -> None:
    content = openapi["paths"]["/songs"]["get"]["responses"]["200"]["content"]

    assert {"application/json", "text/csv", "application/x-ndjson"} <= content.keys()


@pytest.mark.parametrize("schema", ["SongCreate", "SongUpdate", "SongPublic", "BatchResult"])
def test_song_shapes_have_examples(openapi: dict[str, Any], schema: str) -> None:
    assert openapi["components"]["schemas"][schema]["examples"]


def test_problem_fields_have_examples(openapi: dict[str, Any]) -> None:
    properties = openapi["components"]["schemas"]["Problem"]["properties"]

    for name in ("type", "title", "status", "detail", "code"):
        assert properties[name]["examples"], name


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "Songbook"
    assert (await client.get("/docs")).status_code == 200


@pytest.mark.parametrize(
    ("path", "method", "header"),
    [
        ("/songs", "get", ["Prefer", "Songbook-Read-After"]),
        ("/songs", "post", ["Idempotency-Key"]),
        ("/songs/batch", "post", ["Idempotency-Key"]),
        ("/songs/{song_id}", "get", ["If-None-Match", "If-Match", "Songbook-Read-After"]),
        ("/songs/{song_id}", "patch", ["If-Match", "If-None-Match"]),
        ("/songs/{song_id}", "put", ["If-Match", "If-None-Match"]),
        ("/songs/{song_id}", "delete", ["If-Match", "If-None-Match"]),
        ("/artists", "get", ["Songbook-Read-After"]),
    ],
)
def test_the_request_headers_each_route_reads_are_documented(
    openapi: dict[str, Any], path: str, method: str, header: list[str]
) -> None:
    headers = [p for p in openapi["paths"][path][method]["parameters"] if p["in"] == "header"]

    assert [p["name"] for p in headers] == header
    assert all(p["description"] for p in headers)


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/songs", "post", "201"),
        ("/songs/batch", "post", "200"),
        ("/songs/{song_id}", "patch", "200"),
        ("/songs/{song_id}", "put", "200"),
        ("/songs/{song_id}", "delete", "204"),
    ],
)
def test_the_read_after_token_of_writes_is_documented(
    openapi: dict[str, Any], path: str, method: str, status: str
) -> None:
    assert "Songbook-Read-After" in openapi["paths"][path][method]["responses"][status]["headers"]


@pytest.mark.parametrize("path", ["/songs", "/songs/batch"])
async def test_what_an_idempotency_key_must_be_is_described_and_held_to(
    openapi: dict[str, Any], client: httpx.AsyncClient, path: str
) -> None:
    [header] = [p for p in openapi["paths"][path]["post"]["parameters"] if p["name"] == "Idempotency-Key"]
    schema = header["schema"]
    song = {"name": "Help!", "artist": "The Beatles"}
    body = song if path == "/songs" else [song]

    longest = await client.post(path, json=body, headers={"Idempotency-Key": "k" * schema["maxLength"]})
    too_long = await client.post(path, json=body, headers={"Idempotency-Key": "k" * (schema["maxLength"] + 1)})
    spaced = await client.post(path, json=body, headers={"Idempotency-Key": "two words"})

    assert (schema["minLength"], schema["maxLength"]) == (1, 255)
    assert re.fullmatch(schema["pattern"].strip("^$"), "two words") is None
    assert longest.status_code in (200, 201)
    assert (too_long.status_code, spaced.status_code) == (422, 422)


@pytest.mark.parametrize("path", ["/songs", "/artists"])
async def test_a_cursors_form_is_described_and_held_to(
    openapi: dict[str, Any], client: httpx.AsyncClient, path: str
) -> None:
    [cursor] = [p for p in openapi["paths"][path]["get"]["parameters"] if p["name"] == "cursor"]
    [form] = [option for option in cursor["schema"]["anyOf"] if option["type"] == "string"]

    refused = await client.get(path, params={"cursor": "not+base64url"})

    assert form["pattern"] == "^[A-Za-z0-9_-]+$"
    assert "only a cursor this service issued" in cursor["description"]
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "cursor"
