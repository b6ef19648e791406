"""Who may do what: `Authorization: Bearer <key>`, checked against the key's scope."""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app import keys, logs, ratelimit
from app.config import Settings, get_settings
from app.db import Database, get_database
from app.errors import UNREADABLE_BODY, Forbidden, Unauthorized
from app.keys import Caller
from app.models import Scope

REALM = 'Bearer realm="songbook"'


@dataclass(frozen=True, slots=True)
class Access:
    """What a route that needs a key works with, once the key is checked: the database, the settings, and who
    is asking."""

    db: Database
    settings: Settings
    caller: Caller | None  # None where no key is needed and none was sent


class KeyRequired(HTTPBearer):
    """A dependency: the request's `Access`, if its key may do what needs `scope`; else 401 or 403.

    One dependency, not a chain of them, and it hands out the database too:
    FastAPI's cost is per dependency, on every request (a second one, for the
    database alone, took 7% of a `GET /songs/{id}`'s instructions, backend/README.md
    "Speed"). As an `HTTPBearer`, it documents the scheme in the OpenAPI description.
    """

    def __init__(self, scope: Scope) -> None:
        super().__init__(
            auto_error=False, scheme_name="HTTPBearer", description="An API key: `songbook keys create` makes one."
        )
        self.scope = scope

    async def __call__(self, request: Request) -> Access:  # type: ignore[override]
        settings = await get_settings(request)
        found = await caller(request, settings)
        if needs_key(settings, self.scope):  # else open to all
            if found is None:
                raise Unauthorized(
                    f"This needs an API key with the {self.scope} scope: Authorization: Bearer <key>.",
                    headers={"WWW-Authenticate": REALM},
                )
            if not found.may(self.scope):
                raise Forbidden(
                    f"The key {found.name!r} has the {found.scope} scope; this needs {self.scope}.",
                    headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{self.scope}"'},
                )
        return Access(await get_database(request), settings, found)


def needs_key(settings: Settings, scope: Scope) -> bool:
    """Whether `scope` needs a key: reading with `require_read_key`, writing unless told not to, admin always."""
    if scope == "read":
        return settings.require_read_key
    return scope == "admin" or settings.require_write_key


async def caller(request: Request, settings: Settings) -> Caller | None:
    """The key a request carries, checked; None if it carries none. A bad key is refused, even where none is needed."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        return await check_key(request, settings, None)
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        await _limit_address(request, settings)
        raise Unauthorized("Send the key as Authorization: Bearer <key>.", headers={"WWW-Authenticate": REALM})
    return await check_key(request, settings, key.strip())


async def check_key(request: Request, settings: Settings, key: str | None) -> Caller | None:
    """The caller `key` stands for (None for no key), counted against its rate limit; `Unauthorized` if not valid.

    Requests without a key, and with a bad one, count against their sender's address.
    """
    if key is None:
        await _limit_address(request, settings)
        return None
    found = await (await keys.get_keyring(request)).check(db=await get_database(request), key=key)
    if found is None:
        await _limit_address(request, settings)
        raise Unauthorized(
            "This key is not valid: unknown, mistyped or revoked.",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    context = logs.current_request.get()
    if context is not None:  # the request's log records name its key: its id and name, never the key
        context.api_key_id, context.api_key_name = found.key_id, found.name
    buckets = ratelimit.buckets_of(request)
    await ratelimit.limit(buckets, f"key:{found.prefix}", settings.rate_limit_per_second, settings.rate_limit_burst)
    return found


async def _limit_address(request: Request, settings: Settings) -> None:
    address = request.client.host if request.client else "unknown"
    await ratelimit.limit(
        ratelimit.buckets_of(request),
        f"address:{address}",
        settings.anonymous_rate_limit_per_second,
        settings.anonymous_rate_limit_burst,
    )


def require(scope: Scope) -> Any:
    """A dependency that lets the request through only with a key of `scope` (or a greater one)."""
    return Depends(KeyRequired(scope))


# A route's `Access`, for what it does: read the catalog, change it, manage the keys.
ReaderDep = Annotated[Access, require("read")]
WriterDep = Annotated[Access, require("write")]
AdminDep = Annotated[Access, require("admin")]


class KeyFirstRoute(APIRoute):
    """An API route that checks the key, and counts the request, before it refuses a body it cannot read.

    FastAPI reads a JSON body before it runs the dependencies: without this,
    anyone's write with a body that is not JSON would be a 400, not a 401,
    and no rate limit would count it.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        checks = [
            dependency.call for dependency in self.dependant.dependencies if isinstance(dependency.call, KeyRequired)
        ]
        if not checks:
            return handler

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (RequestValidationError, HTTPException) as exc:
                if _unread_body(exc):  # raised before the dependencies ran: they run now
                    for check in checks:
                        await check(request)
                raise

        return handle


def _unread_body(exc: Exception) -> bool:
    if isinstance(exc, RequestValidationError):
        return any(error["type"] == "json_invalid" for error in exc.errors())
    read = isinstance(exc, HTTPException) and exc.status_code == 400 and exc.detail == UNREADABLE_BODY
    return read and not isinstance(exc.__cause__, ClientDisconnect)  # a client gone is answered no more
