"""One error shape for the whole service: RFC 9457 problem details.

The catalog logic raises `AppError`s; the handlers here render them, and the
framework's own errors (unknown path, wrong method, invalid input), in that
one shape, as `application/problem+json`.
"""

import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs, metrics
from app.headers import API_POLICY, SECURITY_HEADERS

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 5


class FieldError(BaseModel):
    """One reason a request was refused, and where in the request it lies."""

    location: str = Field(examples=["body"])
    field: str = Field(examples=["name"])
    message: str = Field(examples=["String should have at most 200 characters"])
    type: str = Field(examples=["string_too_long"])


class BatchDuplicate(BaseModel):
    """An item of a batch that names a song already there: in the catalog, or earlier in the batch."""

    index: int = Field(description="The item's place in the batch, from 0.")
    existing_id: int | None = Field(default=None, description="The catalog's song it repeats.")
    same_as: int | None = Field(default=None, description="The earlier item it repeats.")


class Problem(BaseModel):
    """An error, as every route answers one (RFC 9457)."""

    type: str = Field(examples=["urn:songbook:problem:not-found"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["No song has id 42."])
    code: str = Field(description="Stable machine-readable code.", examples=["not-found"])
    errors: list[FieldError] | None = Field(default=None, description="For invalid input: each field and why.")
    existing_id: int | None = Field(default=None, description="For a duplicate: the id of the song already there.")
    duplicates: list[BatchDuplicate] | None = Field(
        default=None,
        description="For a batch refused under `on_conflict=error`: each item naming a song already there.",
    )
    request_id: str = Field(
        description="The request's id, as in its X-Request-ID header: the service's logs of it carry the same.",
        examples=["9f1c2e4b7a0d4c3e8b6a5f4e3d2c1b0a"],
    )


class AppError(Exception):
    """Base of the errors the service answers with; subclasses set the status and code."""

    status_code: int = 500
    code: str = "internal-error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


class NotFound(AppError):
    status_code = 404
    code = "not-found"


class PreconditionFailed(AppError):
    status_code = 412
    code = "precondition-failed"

    def __init__(self, song_id: int, etag: str) -> None:
        super().__init__(
            f"Song {song_id} is at ETag {etag}: the request's If-Match does not name it (a weak tag, W/, never"
            " matches), or its If-None-Match does. Read the song again before you retry.",
            headers={"ETag": etag},
        )


class PreconditionRequired(AppError):
    status_code = 428
    code = "precondition-required"

    def __init__(self) -> None:
        super().__init__("Send If-Match with the ETag of the song as you read it (GET /songs/{id}).")


class DuplicateSong(AppError):
    status_code = 409
    code = "duplicate-song"

    def __init__(self, existing_id: int) -> None:
        super().__init__(
            f"The catalog already has this song, with id {existing_id}.",
            headers={"Location": f"/songs/{existing_id}"},
            existing_id=existing_id,
        )


class DuplicateSongs(AppError):
    status_code = 409
    code = "duplicate-songs"

    def __init__(self, duplicates: list[BatchDuplicate]) -> None:
        super().__init__(
            f"{len(duplicates)} of the songs are in the catalog already or repeated in the batch; nothing was written.",
            duplicates=[duplicate.model_dump(exclude_none=True) for duplicate in duplicates],
        )


class InvalidParameter(AppError):
    status_code = 422
    code = "validation-failed"

    def __init__(self, location: str, field: str, message: str, type_: str = "value_error") -> None:
        super().__init__(
            f"{location} {field}: {message}",
            errors=[FieldError(location=location, field=field, message=message, type=type_).model_dump()],
        )


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload-too-large"


class DatabaseUnavailable(AppError):
    status_code = 503
    code = "database-unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class NoWritableDatabase(DatabaseUnavailable):
    """None of the database's servers takes writes (a failover under way); reads may go to any of them."""


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class DuplicateKeyName(AppError):
    status_code = 409
    code = "duplicate-key-name"


class IdempotencyKeyInUse(AppError):
    status_code = 409
    code = "idempotency-key-in-use"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class IdempotencyKeyReused(AppError):
    status_code = 422
    code = "idempotency-key-reused"


class TooManyRequests(AppError):
    status_code = 429
    code = "too-many-requests"


class SchemaBehind(AppError):
    """The database's schema is older than the code's: not gone on a retry, so no `Retry-After`."""

    status_code = 503
    code = "database-not-migrated"

    def __init__(self) -> None:
        super().__init__(
            "The database's schema is older than this version of songbook, or was never made; run `songbook migrate`."
        )


class IdsUsedUp(AppError):
    """The song table's ids stop at 2**31 - 1 (`fields.ID_MAX`), and the next one was past it."""

    status_code = 409
    code = "ids-used-up"

    def __init__(self) -> None:
        super().__init__(
            "The catalog has no song ids left for new songs: ids stop at 2,147,483,647, and a song has"
            " one near it (perhaps brought by an import); nothing was written."
        )


# SQLite: the message of the trigger that stops its ids there (migration e5a1c7d9b2f4).
# PostgreSQL: the sequence's `sequence_generator_limit_exceeded`.
_IDS_USED_UP_MESSAGE = "song ids used up"
_IDS_USED_UP_SQLSTATE = "2200H"


def ids_used_up(exc: BaseException) -> bool:
    """Whether a database's error is the song table out of ids, on either database.

    SQLite's is told by its whole message: a unique violation's names the song's keys, which may hold the words.
    """
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    sqlstate = getattr(orig, "sqlstate", None)
    return sqlstate == _IDS_USED_UP_SQLSTATE if sqlstate is not None else str(orig) == _IDS_USED_UP_MESSAGE


# Errors of the commands, told to a person on the terminal rather than answered over HTTP.


class SettingsError(Exception):
    """A setting has a bad value; the message names the variable and the reason."""


class FileError(Exception):
    """A file that cannot be read as songs at all (no header, not a JSON array...)."""


class MaxErrorsExceeded(Exception):
    """More rows were rejected than allowed: the import stopped and wrote nothing."""


class ImportAborted(Exception):
    """An import stopped before it finished, for the reason its message gives: it wrote nothing."""


class ImportNeedsIdsPast(ImportAborted):
    """An import whose new songs would need ids past the largest a song may have (over HTTP: `IdsUsedUp`)."""


def problem_response(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
) -> JSONResponse:
    """A problem-details response; every error the service sends is built here."""
    body = problem_body(status, code, detail, **extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_body(status: int, code: str, detail: str, **extensions: Any) -> dict[str, Any]:
    """The RFC 9457 members, then the extensions (`errors`, `existing_id`) and the request's id."""
    body = {
        "type": f"urn:songbook:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **extensions,
    }
    request_id = logs.request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return body


CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the answer
_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large", 415: "unsupported-media-type"}


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(exc)


def error_response(exc: AppError) -> JSONResponse:
    """The problem-details response of an `AppError`."""
    if exc.status_code == 503:
        metrics.unavailable.labels(exc.code).inc()
    return problem_response(exc.status_code, exc.code, exc.detail, headers=exc.headers, **exc.extensions)


# What FastAPI answers for a body it could not read, beyond JSON's syntax (`json_invalid`).
UNREADABLE_BODY = "There was an error parsing the body"
_UNREADABLE_JSON = {
    UnicodeDecodeError: "it is not UTF-8 text",
    RecursionError: "it is nested too deeply",
    ValueError: "a number in it has more digits than Python reads (4,300)",
}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc.__cause__, ClientDisconnect):  # gone while sending its body: no one reads an answer
        return Response(status_code=CLIENT_CLOSED)
    if exc.status_code == 400 and exc.detail == UNREADABLE_BODY:
        if _not_json(request):  # a form
            return problem_response(400, "malformed-body", "The request body cannot be read as a form.")
        reason = _UNREADABLE_JSON.get(type(exc.__cause__), "it cannot be parsed")
        return problem_response(400, "malformed-json", f"The request body is not valid JSON: {reason}.")
    code = _HTTP_CODES.get(exc.status_code, f"http-{exc.status_code}")
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else _default_detail(request, exc)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem_response(exc.status_code, code, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    # Starlette's Allow names only the first route that matched the path; a path
    # served by several routes (GET and POST /songs) needs all of theirs.
    routes = request.app.router.routes
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def _default_detail(request: Request, exc: HTTPException) -> str:
    if exc.status_code == 404:
        return f"Nothing is at {request.url.path}."
    if exc.status_code == 405:
        return f"{request.method} is not allowed on {request.url.path}."
    return HTTPStatus(exc.status_code).description


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_field_error(error) for error in exc.errors()]
    types = {error.type for error in errors}
    if "json_invalid" in types:
        return problem_response(400, "malformed-json", "The request body is not valid JSON.")
    if "content_type" in types or ("model_attributes_type" in types and _not_json(request)):
        return problem_response(
            415, "unsupported-media-type", "Send the request body as JSON, with Content-Type: application/json."
        )
    summary = "; ".join(f"{error.field}: {error.message}" for error in errors)
    return problem_response(
        422, "validation-failed", f"Invalid request: {summary}.", errors=[error.model_dump() for error in errors]
    )


def _not_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type != "application/json" and not content_type.endswith("+json")


def _field_error(error: Any) -> FieldError:
    location, *path = error["loc"] or ("request",)
    field = ".".join(str(part) for part in path) or location
    message = str(error["msg"]).removeprefix("Value error, ")
    return FieldError(location=str(location), field=field, message=message, type=error["type"])


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    metrics.database_errors.labels(type(exc).__name__).inc()
    if await _schema_behind(request, exc):
        logger.warning("database schema behind the code's: %s", driver_says(exc))
        return error_response(SchemaBehind())
    logger.warning("database unavailable: %s", driver_says(exc))
    return error_response(DatabaseUnavailable(NOT_ANSWERING_DETAIL))


# PostgreSQL gave up on a statement (cancelled by statement_timeout, a lock it
# could not get, a serialization failure or deadlock), or has no connection to
# spare. Transient: the client may retry.
TRANSIENT_SQLSTATES = frozenset({"57014", "55P03", "40001", "40P01", "53300"})
# The server ended the connection (shut down, crashed, or was told to), would not take it yet, or
# no longer takes writes (a standby now: a switchover's old primary, reached through PgBouncer).
LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "25006"})
NOT_ANSWERING_DETAIL = "The database is not answering; try again shortly."
# A table or a column the database does not have: its schema behind the code's (never migrated, or not all
# the way), or a statement the service should not have sent. Which, the database's revision tells.
_UNDEFINED = frozenset({"42P01", "42703"})
_SQLITE_UNDEFINED = re.compile(r"no such (table|column): |table \S+ has no column named ")


def _names_missing(exc: BaseException) -> bool:
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    return getattr(orig, "sqlstate", None) in _UNDEFINED or bool(_SQLITE_UNDEFINED.match(str(orig)))


async def _schema_behind(request: Request, exc: BaseException) -> bool:
    behind: Callable[[Any], Awaitable[bool]] = request.app.state.schema_behind
    return _names_missing(exc) and await behind(request.app.state.database)


# The database not there, or not in time; asyncpg's InternalClientError is a connection
# that died under it while idle.
NOT_ANSWERING = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    ConnectionError,
    TimeoutError,
    asyncpg.InternalClientError,
)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    metrics.database_errors.labels(type(orig).__name__).inc()
    if ids_used_up(exc):
        return error_response(IdsUsedUp())
    if await _schema_behind(request, exc):
        logger.warning("database schema behind the code's: %s", driver_says(exc))
        return error_response(SchemaBehind())
    unavailable = database_unavailable(exc)
    if unavailable is None:
        return _failed(request)
    logger.warning("database unavailable: %s", driver_says(exc))
    return error_response(unavailable)


def driver_says(exc: BaseException) -> str:
    """The driver's error under `exc` and the first line of its message, for logs (never the client):
    SQLAlchemy's wrapper of asyncpg's errors is one class, `Error`, for most of them."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig.__cause__ or exc.orig
    message = str(exc).partition("\n")[0]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def database_unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """The 503 a database's error stands for when the database failed (gone, restarting, too slow), as the API
    answers it; None when the service did (a statement it should not have sent): a 500, logged."""
    if isinstance(exc, NOT_ANSWERING):
        return DatabaseUnavailable(NOT_ANSWERING_DETAIL)
    # Through SQLAlchemy: the connection was lost mid-statement (SQLAlchemy drops the
    # pool's others with it), or the statement gave up. From asyncpg itself (the hot
    # paths' pool): the statement gave up, or the server closed the connection.
    if isinstance(exc, sa_exc.DBAPIError):
        transient, orig = exc.connection_invalidated, exc.orig
    elif isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        # asyncpg's own InterfaceError is a closed connection or pool; its subclasses
        # (bad data, configuration) are the service's faults, not the database's.
        transient = isinstance(exc, asyncpg.PostgresConnectionError) or type(exc) is asyncpg.InterfaceError
        orig = exc
    else:
        return None
    sqlstate = str(getattr(orig, "sqlstate", "") or "")
    if transient or sqlstate in LOST_SQLSTATES or sqlstate.startswith("08"):
        return DatabaseUnavailable(
            "The connection to the database was lost, or its server no longer takes writes"
            " (a restart, a failover); try again shortly."
        )
    if sqlstate in TRANSIENT_SQLSTATES:
        return DatabaseUnavailable("The database took too long to answer; try again shortly.")
    return None


def _failed(request: Request) -> JSONResponse:
    # Logged with its traceback here; the client learns nothing of the internals.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(500, "internal-error", "The service failed to answer this request.")


class InternalErrors:
    """The 500 of an error no handler answered, inside the other middleware.

    Starlette answers those outside every middleware, where CORS, the request's
    log context and the access log's byte count are gone, and hands the error
    on to the server, which logs its traceback again. Here it is answered
    like any other error, and the error goes no further.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception:
            if started:  # too late to answer: the server ends the response
                raise
            await _failed(Request(scope))(scope, receive, send)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # An error of the outer middleware, rendered outside it (Starlette's ServerErrorMiddleware): the request's context
    # (its id, for the traceback's record and the body), and the headers, are taken up here.
    context = request.scope.get(logs.SCOPE_KEY)
    token = logs.current_request.set(context) if context is not None else None
    try:
        response = _failed(request)
    finally:
        if token is not None:
            logs.current_request.reset(token)
    response.headers.update({name.decode(): value.decode() for name, value in (*SECURITY_HEADERS, API_POLICY)})
    if context is not None:
        response.headers["X-Request-ID"] = context.request_id
    return response


def install_error_handlers(app: FastAPI, *, schema_behind: Callable[[Any], Awaitable[bool]]) -> None:
    """Render every error, the service's and the framework's, as problem details.

    `schema_behind(database)` tells whether a statement on a table or column the database lacks is a schema
    not migrated (a 503) or the service's fault (a 500).
    """
    app.state.schema_behind = schema_behind
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for exc_class in NOT_ANSWERING:
        app.add_exception_handler(exc_class, _database_unavailable)
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
    app.add_exception_handler(asyncpg.PostgresError, _database_error)
    app.add_exception_handler(asyncpg.InterfaceError, _database_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(InternalErrors)  # the first added: the innermost
