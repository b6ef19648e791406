"""The web page's state in a browser: one signed cookie, holding the person's API key and a form token.

The cookie is signed (itsdangerous), `HttpOnly`, `SameSite=Strict`, and
`Secure` when the page is served over HTTPS; the key in it is never put in a
URL, in the page, or in a log line. Every form that changes something carries
the cookie's token and is refused without it (cross-site request forgery):
another site can neither read the token nor, with `SameSite=Strict`, send the
cookie along.
"""

import hmac
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.config import Settings

COOKIE = "songbook_session"
MAX_AGE_SECONDS = 7 * 24 * 3600  # a sign-in lasts a week, unless the key is revoked before
SECRET_FILE = "session-secret"  # noqa: S105 (a file name, not a secret)


@dataclass(frozen=True)
class WebSession:
    """What the cookie holds: the token every form carries back, and the key signed in with, if any."""

    token: str
    key: str | None = None

    @classmethod
    def new(cls, key: str | None = None) -> "WebSession":
        """A session with a fresh token: made at the first visit, and again at each sign-in and sign-out."""
        return cls(secrets.token_urlsafe(24), key)

    def without_key(self) -> "WebSession":
        return replace(self, key=None)

    def carries(self, token: str) -> bool:
        """Whether a form's `token` is this session's (compared in constant time)."""
        return hmac.compare_digest(self.token.encode(), token.encode())


class Sessions:
    """Reads and writes the session cookie; made once by the lifespan."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="songbook.web-session")

    def read(self, request: Request) -> WebSession | None:
        """The request's session; None if it has none, or one that is forged, damaged or too old."""
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=MAX_AGE_SECONDS)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            return None
        key = data.get("key")
        return WebSession(data["token"], key if isinstance(key, str) else None)

    def write(self, request: Request, response: Response, session: WebSession) -> None:
        value = self._serializer.dumps({"token": session.token, "key": session.key})
        response.set_cookie(
            COOKIE,
            value,
            max_age=MAX_AGE_SECONDS,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )


async def get_sessions(request: Request) -> Sessions:
    """The process's `Sessions`, made by the lifespan."""
    sessions: Sessions = request.app.state.sessions
    return sessions


def session_secret(settings: Settings) -> str:
    """`SONGBOOK_SESSION_SECRET`, or one made at the first start and kept, readable by its owner only, in data_dir."""
    if settings.session_secret:
        return settings.session_secret
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under another name, then linked into place: of two processes starting at
    # once, one links its secret and the other reads it, never a half-written file.
    draft = path.with_name(f"{SECRET_FILE}.{os.getpid()}")
    with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(secrets.token_urlsafe(48))
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text().strip()
