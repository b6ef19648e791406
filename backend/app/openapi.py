"""The OpenAPI description: what FastAPI derives, and what it cannot, added in one place.

Routes document their error answers with `problem_responses` and the request
headers they read with `reads_headers`; `describe` adds the `Problem` schema
those refer to and marks the key optional on public reads.
"""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from app.errors import PROBLEM_MEDIA_TYPE, Problem, problem_body

# The request headers the routes heed. Each is read where it is used (`preconditions`,
# `idempotency`, `links`) and documented here, not declared as a parameter: FastAPI
# parses every declared header on every request (about 25 µs of a GET, backend/README.md, "Speed").
REQUEST_HEADERS = {
    "Prefer": "`count=exact` or `count=estimated` to be told the total in `X-Total-Count`.",
    "If-Match": 'The ETag the song must still have, as read (`"3"`), or `*`: else 412 and nothing changes.',
    "If-None-Match": "An ETag read before: 304 if it is still so (a read); 412 if it is (a write), and `*` always.",
    "Songbook-Read-After": "The `Songbook-Read-After` of a write's answer (where the service reads on replicas): "
    "this read then sees that write and all before it. Without it, a read may miss writes of the last "
    "`SONGBOOK_REPLICA_MAX_LAG_MS`. A value that is not such a token reads the latest data.",
    "Idempotency-Key": "Any unique string (a UUID) of 1 to 255 printable ASCII characters, no spaces: a retry "
    "with the same key and request gets the first answer again, with `Idempotent-Replayed: true`, and writes "
    "nothing more. Kept 24 hours, per API key.",
}
# What a header's value must be, beyond a string; a value outside it is refused (422).
HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Idempotency-Key": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
}


# The token of a write's answer, where the service reads on replicas (app/replicas.py).
READ_AFTER_HEADER = {
    "Songbook-Read-After": {
        "description": "Where the service reads on replicas: send it back with the reads that must see this "
        "write (`Songbook-Read-After` request header). The primary's WAL position after the write, as "
        "PostgreSQL writes it (`16/B374D848`).",
        "schema": {"type": "string"},
    }
}


def reads_headers(*names: str) -> dict[str, Any]:
    """The `openapi_extra` of a route that reads the request headers `names`."""
    return {
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": REQUEST_HEADERS[name],
                "schema": HEADER_SCHEMAS.get(name, {"type": "string"}),
            }
            for name in names
        ]
    }


def reads_query(model: type[BaseModel], *headers: str) -> dict[str, Any]:
    """The `openapi_extra` of a route that reads its query string as `model` itself (`links.read_query`), and
    the request headers `headers`."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    query = [
        {"name": name, "in": "query", "required": name in required, "schema": field}
        | ({"description": field["description"]} if "description" in field else {})
        for name, field in schema["properties"].items()
    ]
    return {"parameters": [*query, *reads_headers(*headers)["parameters"]]}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer."""
    return {
        status: {
            "content": {
                PROBLEM_MEDIA_TYPE: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": _EXAMPLES[status] | {"request_id": EXAMPLE_REQUEST_ID},
                }
            },
            "description": HTTPStatus(status).phrase,
        }
        for status in statuses
    }


EXAMPLE_REQUEST_ID = "9f1c2e4b7a0d4c3e8b6a5f4e3d2c1b0a"
_EXAMPLES = {
    400: problem_body(400, "malformed-json", "The request body is not valid JSON."),
    401: problem_body(401, "unauthorized", "This needs an API key with the write scope: Authorization: Bearer <key>."),
    403: problem_body(403, "forbidden", "The key 'reader' has the read scope; this needs write."),
    404: problem_body(404, "not-found", "No song has id 42."),
    409: problem_body(409, "duplicate-song", "The catalog already has this song, with id 7.", existing_id=7),
    412: problem_body(
        412,
        "precondition-failed",
        'Song 7 is at ETag "3": the request\'s If-Match does not name it (a weak tag, W/, never matches), '
        "or its If-None-Match does. Read the song again before you retry.",
    ),
    413: problem_body(413, "payload-too-large", "The request body is larger than 1048576 bytes."),
    415: problem_body(
        415, "unsupported-media-type", "Send the request body as JSON, with Content-Type: application/json."
    ),
    422: problem_body(
        422,
        "validation-failed",
        "Invalid request: name: String should have at least 1 character.",
        errors=[
            {
                "location": "body",
                "field": "name",
                "message": "String should have at least 1 character",
                "type": "string_too_short",
            }
        ],
    ),
    428: problem_body(
        428, "precondition-required", "Send If-Match with the ETag of the song as you read it (GET /songs/{id})."
    ),
    500: problem_body(500, "internal-error", "The service failed to answer this request."),
    503: problem_body(503, "database-unavailable", "The database is not answering; try again shortly."),
}


def describe(app: FastAPI, *, require_read_key: bool, max_page_size: int) -> None:
    """Makes `app.openapi()` add what FastAPI cannot derive: the `Problem` schema, public reads, the largest page."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            described = generate()
            schemas = described.setdefault("components", {}).setdefault("schemas", {})
            problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem.pop("$defs", {}), Problem=problem)
            if not require_read_key:
                _mark_reads_public(described)
            _limit_pages(described, max_page_size)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def _limit_pages(described: dict[str, Any], largest: int) -> None:
    """Each listing's `limit` at most this service's largest page (the `max_page_size` setting)."""
    for operations in described.get("paths", {}).values():
        for parameter in operations.get("get", {}).get("parameters", []):
            if parameter["name"] == "limit" and parameter["in"] == "query":
                parameter["schema"]["maximum"] = largest


def _mark_reads_public(described: dict[str, Any]) -> None:
    """The key is optional on the reads: none, or a key (whose scope is then checked)."""
    for path, operations in described.get("paths", {}).items():
        read = operations.get("get")
        if read and "security" in read and not path.startswith("/keys"):
            read["security"] = [{}, *read["security"]]
