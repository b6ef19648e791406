"""Every request's id, access log record and HTTP metrics: one ASGI middleware, the outermost.

A request keeps the `X-Request-ID` its client sent when it is sane (printable
ASCII without spaces, 1 to 128 characters), or gets one; every response carries it back, and
every record logged while the request runs carries it (`logs.current_request`).
"""

import asyncio
import random
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs, metrics
from app.errors import CLIENT_CLOSED

HEADER = b"x-request-id"
# Printable ASCII without the space (as an Idempotency-Key): a space would make a field of its own in a log line.
SANE_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
# The methods of HTTP; any other is counted as OpenTelemetry says, as "_OTHER".
METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})


class RequestTelemetry:
    """Gives each request its id, and after it, its access log record and its place in the metrics."""

    def __init__(self, app: ASGIApp, *, access_log: logs.AccessLog | None, metrics: bool) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics = metrics
        # One child per (method, route, status): labels() costs twice what observe() does.
        self._durations: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        request_id = _request_id(scope["headers"])
        context = logs.RequestContext(request_id)
        # For the handler of an unhandled error, which Starlette runs outside every middleware.
        scope[logs.SCOPE_KEY] = context
        token = logs.current_request.set(context)
        header = (HEADER, request_id.encode())
        status = 0
        size = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        method = scope["method"] if scope["method"] in METHODS else "_OTHER"
        if self.metrics:
            metrics.active[method] += 1
        failed = False
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED  # gone before an answer: not the service's error
            raise
        except Exception:
            failed = True
            status = status or 500  # Starlette's handler answers it, outside this middleware
            raise
        finally:
            duration = time.perf_counter() - started
            route = _route(scope, root_path)
            if self.metrics:
                metrics.active[method] -= 1
                self._observe(method, route, status, duration)
            if self.access_log is not None:
                self._log(self.access_log, scope, method, route, status, duration, size, failed)
            logs.current_request.reset(token)

    def _observe(self, method: str, route: str, status: int, duration: float) -> None:
        child = self._durations.get((method, route, status))
        if child is None:
            child = metrics.request_duration.labels(method, route, str(status))
            self._durations[method, route, status] = child
        child.observe(duration)

    def _log(
        self,
        access_log: logs.AccessLog,
        scope: Scope,
        method: str,
        route: str,
        status: int,
        duration: float,
        size: int,
        failed: bool,
    ) -> None:
        client = scope.get("client")
        record: dict[str, Any] = {
            "event": "request",
            "logger": "songbook.access",
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "bytes": size,
            "client": client[0] if client else None,
        }
        if failed and status < 500:
            record["aborted"] = True  # failed after its status was sent: the body is cut short
        access_log.write("error" if failed or status >= 500 else "info", record)


def _route(scope: Scope, root_path: str) -> str:
    """The template of the route that answered; a mount's path (the docs' assets); else one value for all."""
    route = scope.get("route")
    if route is None and "endpoint" in scope:
        # A Starlette route (the OpenAPI document's): FastAPI's router names only its own in the scope.
        route = next((r for r in scope["app"].router.routes if getattr(r, "endpoint", None) is scope["endpoint"]), None)
    if route is not None:
        return str(route.path_format)
    mounted = scope.get("root_path", "")
    if mounted != root_path:  # a mount that matched appends its path to the root path
        return f"{mounted.removeprefix(root_path)}/{{path}}"
    return metrics.UNMATCHED_ROUTE


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == HEADER:
            if SANE_REQUEST_ID.fullmatch(value):
                return value.decode()
            break
    # Unique, not secret: 128 random bits from the process's generator, without the system call
    # (getrandom, about 5 µs under load) that os.urandom makes for each.
    return f"{random.getrandbits(128):032x}"
