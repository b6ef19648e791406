"""Headers on every response: what a browser must not do with the API's answers; and CORS, when configured."""

import base64
import hashlib
import re

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The interactive docs run Swagger UI's and ReDoc's scripts, which the API's own policy forbids. Theirs allows those
# the service serves itself, and the page's own inline script, by its hash.
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
DOCS_POLICY = (
    "default-src 'none'; script-src 'self' {scripts}; "
    # Both style their elements from their scripts; ReDoc runs its search in a worker made from a blob.
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; "
    "worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)

# The page for people (/ and /ui/...) runs its own script file and style sheet, and nothing inline:
# what a person typed can never run as script there, whatever reaches the page.
PAGE_POLICY = (
    b"content-security-policy",
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
)

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
API_POLICY = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")

EXPOSED_HEADERS = [
    "ETag",
    "Location",
    "Link",
    "Retry-After",
    "X-Total-Count",
    "Preference-Applied",
    "Content-Disposition",
    "X-Request-ID",
    "Songbook-Read-After",
    "Idempotent-Replayed",
]
ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "Prefer",
    "X-Request-ID",
    "Songbook-Read-After",
]


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` and a content security policy to every response: the API's allows nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in DOCS_PATHS:
            await self.app(scope, receive, _DocsPolicy(send))
            return
        path = scope["path"]
        extra = PAGE_HEADERS if path == "/" or path.startswith("/ui/") else API_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


API_HEADERS = [*SECURITY_HEADERS, API_POLICY]
PAGE_HEADERS = [*SECURITY_HEADERS, PAGE_POLICY]


class _DocsPolicy:
    """Sends a docs page (small, whole) with a policy that allows its inline scripts by their hashes."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        hashes = " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
            for script in _INLINE_SCRIPT.findall(self.body)
        )
        policy = (b"content-security-policy", DOCS_POLICY.format(scripts=hashes).encode())
        self.start["headers"] = [*self.start.get("headers", ()), *SECURITY_HEADERS, policy]
        await self.send(self.start)
        await self.send({"type": "http.response.body", "body": self.body})


class ProblemCORS(CORSMiddleware):
    """Starlette's CORS, whose refused preflight is a problem, as every error of the service."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        from app.errors import problem_response  # here: app.errors imports this module's headers

        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        headers = {name: value for name, value in response.headers.items() if name.startswith("access-control-")}
        detail = f"This cross-origin request is refused; not allowed here: its {refused}."
        return problem_response(400, "cors-refused", detail, headers=headers)


def install_headers(app: FastAPI, cors_origins: list[str]) -> None:
    """Security headers always; CORS only for the origins configured (none by default).

    CORS goes outside the rest, so that every answer, a 413 included, has its
    headers; a preflight is answered by CORS alone.
    """
    app.add_middleware(SecurityHeaders)
    if cors_origins:
        app.add_middleware(
            ProblemCORS,
            allow_origins=cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
