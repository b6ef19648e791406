"""Headers on every response: what a browser must not do with the API's answers; and CORS, when configured."""

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The interactive docs are the one HTML the service serves: they load Swagger
# UI's scripts, which the API's own policy would forbid.
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})

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
]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "If-Match", "If-None-Match", "Idempotency-Key", "Prefer"]


class SecurityHeaders:
    """Adds `SECURITY_HEADERS`, and a content security policy that allows nothing, to every response but the docs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = DOCS_HEADERS if scope["path"] in DOCS_PATHS else API_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


DOCS_HEADERS = SECURITY_HEADERS
API_HEADERS = [*SECURITY_HEADERS, API_POLICY]


def install_headers(app: FastAPI, cors_origins: list[str]) -> None:
    """Security headers always; CORS only for the origins configured (none by default).

    CORS goes outside the rest, so that every answer, a 413 included, has its
    headers; a preflight is answered by CORS alone.
    """
    app.add_middleware(SecurityHeaders)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
