"""API keys: made, listed, revoked, and checked on each request.

A key is `sb_<prefix>_<secret>`: 8 random characters by which it is found,
then 32 random bytes. Only the SHA-256 of the whole key is stored: with that
much entropy a slow hash buys nothing, and checking a key stays cheap on every
request. The hash is compared in constant time.
"""

import contextlib
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import bindparam, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import DATABASE_ERRORS, Database, write_connection
from app.errors import AppError, NotFound
from app.models import SCOPES, ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, Scope, utcnow

KEY_PREFIX = "sb_"
LAST_USED_EVERY_SECONDS = 60.0  # how often a key's last use is written, at most, per process


class DuplicateKeyName(AppError):
    status_code = 409
    code = "duplicate-key-name"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a key's id, name and scope."""

    key_id: int
    name: str
    scope: Scope
    prefix: str

    def may(self, scope: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(*, session: AsyncSession, key_in: ApiKeyCreate) -> ApiKeyCreated:
    """Makes a key; its secret is in the answer, and nowhere else ever after."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(name=key_in.name, scope=key_in.scope, prefix=prefix, secret_hash=_hash(key))
    await write_connection(session)
    session.add(row)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise DuplicateKeyName(f"A key is named {key_in.name!r} already.") from None
    return ApiKeyCreated.model_validate(row.model_dump() | {"key": key})


async def list_keys(*, session: AsyncSession) -> list[ApiKeyPublic]:
    rows = await session.exec(select(ApiKey).order_by(col(ApiKey.id)))
    return [ApiKeyPublic.model_validate(row.model_dump()) for row in rows]


async def revoke_key(*, session: AsyncSession, key_id: int) -> ApiKeyPublic:
    """Revokes a key: from now on it is refused. Revoking twice changes nothing."""
    await write_connection(session)
    statement = (
        update(ApiKey)
        .where(col(ApiKey.id) == key_id)
        .values(revoked_at=utcnow())
        .where(col(ApiKey.revoked_at).is_(None))
        .returning(ApiKey)
    )
    revoked = (await session.exec(statement)).scalar_one_or_none()
    await session.commit()
    if revoked is not None:
        _known.pop(revoked.prefix, None)
    if revoked is None:
        existing = await session.get(ApiKey, key_id)
        if existing is None:
            raise NotFound(f"No key has id {key_id}.")
        revoked = existing
    return ApiKeyPublic.model_validate(revoked.model_dump())


async def find_key_id(*, session: AsyncSession, name: str) -> int | None:
    return (await session.exec(select(ApiKey.id).where(ApiKey.name == name))).first()


_last_recorded: dict[str, float] = {}  # by prefix: random, never reused

# A valid key is believed this long without asking the database again: a key
# revoked elsewhere (another instance, `songbook keys revoke`) is refused here
# within that time; by the process that revokes it, at once.
KNOWN_FOR_SECONDS = 5.0
MAX_KNOWN = 10_000  # keys; then forgotten all at once
_known: dict[str, tuple[float, str, Caller]] = {}  # by prefix: (believed until, the secret's hash, the caller)


# Compiled once (see `Database`): a keyed request runs the first, and once a minute the second.
_FIND_KEY = sa.select(
    col(ApiKey.id), col(ApiKey.name), col(ApiKey.scope), col(ApiKey.secret_hash), col(ApiKey.revoked_at)
).where(col(ApiKey.prefix) == bindparam("prefix"))
_RECORD_USE = update(ApiKey).where(col(ApiKey.id) == bindparam("key_id")).values(last_used_at=bindparam("now"))


async def check_key(*, db: Database, key: str) -> Caller | None:
    """The caller a key stands for; None if it is not a key of ours, or revoked."""
    parts = key.removeprefix(KEY_PREFIX).split("_", 1)
    if not key.startswith(KEY_PREFIX) or len(parts) != 2:
        return None
    prefix, now = parts[0], time.monotonic()
    known = _known.get(prefix)
    if known is None or known[0] <= now:
        rows = await db.fetch(_FIND_KEY, {"prefix": prefix})
        row = rows[0] if rows else None
        if row is None or row["revoked_at"] is not None:
            return None
        known = (now + KNOWN_FOR_SECONDS, row["secret_hash"], Caller(row["id"], row["name"], row["scope"], prefix))
        if len(_known) >= MAX_KNOWN:
            _known.clear()
        _known[prefix] = known
    _, secret_hash, caller = known
    if not hmac.compare_digest(secret_hash, _hash(key)):
        return None
    if now - _last_recorded.get(prefix, -LAST_USED_EVERY_SECONDS) >= LAST_USED_EVERY_SECONDS:
        # Written once a minute at most, not on every request; and only if it can
        # be at once: a busy database must not fail the request for it.
        _last_recorded[prefix] = now
        with contextlib.suppress(*DATABASE_ERRORS):  # busy, or timed out: the use is recorded next time
            await db.fetch(_RECORD_USE, {"key_id": caller.key_id, "now": utcnow()}, write=True)
    return caller
