"""A limit on the size of request bodies, answered with a 413 problem."""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, problem_response


class BodySizeLimit:
    """Refuses a body over `max_bytes`: by its Content-Length before it is read, else as it streams in.

    FastAPI's own `max_body_size` answers in plain text when Content-Length is too
    large, outside the service's error format; hence this middleware.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, uploads: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = uploads or {}  # paths that take files, and their own limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.uploads.get(scope["path"], self.max_bytes)
        detail = f"The request body is larger than {max_bytes} bytes."
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
        received = 0
        if declared.isdigit() and int(declared) > max_bytes:
            if scope["path"] not in self.uploads:
                # Refused before the route runs: one that reads no body (a DELETE) does nothing.
                await problem_response(413, PayloadTooLarge.code, detail)(scope, receive, send)
                return
            received = int(declared)  # refused as the page's route reads it: a page, not JSON

        async def limited_receive() -> Message:
            nonlocal received
            if received > max_bytes:
                raise HTTPException(413, detail)
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_bytes:
                # Raised while the route reads its body: answered as its route answers errors,
                # a problem by the API's, a page by the page's.
                raise HTTPException(413, detail)
            return message

        await self.app(scope, limited_receive, send)
