"""Every request's id, access log record and HTTP metrics: one ASGI middleware, the outermost.

A request keeps the `X-Request-ID` its client sent when it is sane (printable
ASCII, 1 to 128 characters), or gets one; every response carries it back, and
every record logged while the request runs carries it (`logs.current_request`).
"""

import random
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs, metrics

HEADER = b"x-request-id"
MAX_REQUEST_ID = 128
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
        # Not reset when the request ends: the task is the request's own, and the handler of
        # an unhandled error (Starlette's, outside this middleware) must still see it.
        logs.current_request.set(context)
        header = (HEADER, request_id.encode())
        status = 500  # what the client gets if the app raises before answering
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
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            route = _route(scope, root_path)
            if self.metrics:
                metrics.active[method] -= 1
                self._observe(method, route, status, duration)
            if self.access_log is not None:
                self._log(self.access_log, scope, method, route, status, duration, size)

    def _observe(self, method: str, route: str, status: int, duration: float) -> None:
        child = self._durations.get((method, route, status))
        if child is None:
            child = metrics.request_duration.labels(method, route, str(status))
            self._durations[method, route, status] = child
        child.observe(duration)

    def _log(
        self, access_log: logs.AccessLog, scope: Scope, method: str, route: str, status: int, duration: float, size: int
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
        access_log.write("error" if status >= 500 else "info", record)


def _route(scope: Scope, root_path: str) -> str:
    """The template of the route that answered; a mount's path (the docs' assets); else one value for all."""
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    mounted = scope.get("root_path", "")
    if mounted != root_path:  # a mount that matched appends its path to the root path
        return f"{mounted.removeprefix(root_path)}/{{path}}"
    return metrics.UNMATCHED_ROUTE


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == HEADER:
            if 0 < len(value) <= MAX_REQUEST_ID and value.isascii():
                sent = value.decode()
                if sent.isprintable():
                    return sent
            break
    # Unique, not secret: 128 random bits from the process's generator, without the system call
    # (getrandom, about 5 µs under load) that os.urandom makes for each.
    return f"{random.getrandbits(128):032x}"
