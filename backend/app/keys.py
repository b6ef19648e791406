"""API keys: made, listed, revoked, and checked on each request.

A key is `sb_<prefix>_<secret>`: 8 random characters by which it is found,
then 32 random bytes. Only the SHA-256 of the whole key is stored: with that
much entropy a slow hash buys nothing, and checking a key stays cheap on every
request. The hash is compared in constant time.
"""

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Request
from sqlalchemy import bindparam, delete, update
from sqlmodel import col

from app.db import DATABASE_ERRORS, INTEGRITY_ERRORS, Database
from app.errors import DatabaseUnavailable, DuplicateKeyName, InvalidParameter, NotFound
from app.fields import utcnow
from app.models import SCOPES, ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, IdempotencyRecord, Scope

KEY_PREFIX = "sb_"
LAST_USED_EVERY_SECONDS = 60.0  # how often a key's last use is written, at most, per process
# A valid key is believed this long without asking the database again: a key
# revoked elsewhere (another instance, `songbook keys revoke`) is refused here
# within that time; by the process that revokes it, at once.
KNOWN_FOR_SECONDS = 5.0
MAX_KNOWN = 10_000  # keys; then forgotten all at once


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


_PUBLIC_COLUMNS = tuple(col(getattr(ApiKey, name)) for name in ApiKeyPublic.model_fields)
_INSERT_KEY = (
    sa.insert(ApiKey)
    .values({name: bindparam(name) for name in ("name", "scope", "prefix", "secret_hash", "created_at")})
    .returning(*_PUBLIC_COLUMNS)
)
_FORGET_RECORDS = delete(IdempotencyRecord).where(col(IdempotencyRecord.api_key_id) == bindparam("key_id"))
_LIST_KEYS = sa.select(*_PUBLIC_COLUMNS).order_by(col(ApiKey.id))
_GET_KEY = sa.select(*_PUBLIC_COLUMNS).where(col(ApiKey.id) == bindparam("key_id"))
_FIND_KEY_ID = sa.select(col(ApiKey.id)).where(col(ApiKey.name) == bindparam("name"))
_REVOKE_KEY = (
    update(ApiKey)
    .where(col(ApiKey.id) == bindparam("key_id"), col(ApiKey.revoked_at).is_(None))
    .values(revoked_at=bindparam("now"))
    .returning(*_PUBLIC_COLUMNS)
)


async def create_key(*, db: Database, key_in: ApiKeyCreate) -> ApiKeyCreated:
    """Makes a key; its secret is in the answer, and nowhere else ever after."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = {
        "name": key_in.name,
        "scope": key_in.scope,
        "prefix": prefix,
        "secret_hash": _hash(key),
        "created_at": utcnow(),
    }
    try:
        async with db.transaction(write=True) as transaction:
            created = await transaction.fetch(_INSERT_KEY, row)
            # SQLite gives a new key the id of the newest if that was deleted (by hand: keys are revoked,
            # not deleted): the records of that key are not the new one's.
            await transaction.fetch(_FORGET_RECORDS, {"key_id": created[0]["id"]})
    except INTEGRITY_ERRORS:
        raise DuplicateKeyName(f"A key is named {key_in.name!r} already.") from None
    return ApiKeyCreated.model_validate(dict(created[0]) | {"key": key})


async def list_keys(*, db: Database) -> list[ApiKeyPublic]:
    """Every key, revoked ones included; never their secrets."""
    return [ApiKeyPublic.model_validate(dict(row)) for row in await db.fetch(_LIST_KEYS, {})]


async def revoke_key(*, db: Database, key_id: int, keyring: "Keyring | None" = None) -> ApiKeyPublic:
    """Revokes a key: from now on it is refused (by `keyring` at once). Revoking twice changes nothing."""
    rows = await db.fetch(_REVOKE_KEY, {"key_id": key_id, "now": utcnow()}, write=True)
    if rows and keyring is not None:
        keyring.forget(rows[0]["prefix"])
    if not rows:
        rows = await db.fetch(_GET_KEY, {"key_id": key_id})
        if not rows:
            raise NotFound(f"No key has id {key_id}.")
    return ApiKeyPublic.model_validate(dict(rows[0]))


async def find_key_id(*, db: Database, name_or_id: str) -> int:
    """The id of the key named so, or with that id; refused if it names one key and is the id of another."""
    rows = await db.fetch(_FIND_KEY_ID, {"name": name_or_id})
    named = int(rows[0]["id"]) if rows else None
    number = int(name_or_id) if name_or_id.isascii() and name_or_id.isdigit() and len(name_or_id) <= 9 else None
    if number is None or number == named:
        if named is None:
            raise NotFound(f"no key is named {name_or_id!r}")
        return named
    if named is not None and await db.fetch(_GET_KEY, {"key_id": number}):
        raise InvalidParameter(
            "argument",
            "key",
            f"{name_or_id!r} is the name of key {named} and the id of key {number}: "
            f"give key {number}'s name instead, or {named} for key {named}",
        )
    return named if named is not None else number


# Compiled once (see `Database`): a keyed request runs the first, and once a minute the second.
_CHECK_KEY = sa.select(
    col(ApiKey.id), col(ApiKey.name), col(ApiKey.scope), col(ApiKey.secret_hash), col(ApiKey.revoked_at)
).where(col(ApiKey.prefix) == bindparam("prefix"))
_RECORD_USE = update(ApiKey).where(col(ApiKey.id) == bindparam("key_id")).values(last_used_at=bindparam("now"))


class Keyring:
    """The keys one process believes valid, and when it last recorded their use; made by the lifespan."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, str, Caller]] = {}  # by prefix: (believed until, hash, caller)
        self._last_recorded: dict[str, float] = {}  # by prefix: random, never reused
        self._recording: set[asyncio.Task[None]] = set()  # held until done: the loop holds tasks weakly

    async def check(self, *, db: Database, key: str) -> Caller | None:
        """The caller a key stands for; None if it is not a key of ours, or revoked."""
        parts = key.removeprefix(KEY_PREFIX).split("_", 1)
        if not key.startswith(KEY_PREFIX) or len(parts) != 2:
            return None
        prefix, now = parts[0], time.monotonic()
        known = self._known.get(prefix)
        if known is None or known[0] <= now:
            # On the primary: a key made or revoked a moment ago is seen so at once, replicas or not.
            rows = await db.fetch(_CHECK_KEY, {"prefix": prefix}, primary=True)
            if not rows or rows[0]["revoked_at"] is not None:
                return None
            known = (now + KNOWN_FOR_SECONDS, rows[0]["secret_hash"], _caller(rows[0], prefix))
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known[prefix] = known
        _, secret_hash, caller = known
        if not hmac.compare_digest(secret_hash, _hash(key)):
            return None
        if now - self._last_recorded.get(prefix, -LAST_USED_EVERY_SECONDS) >= LAST_USED_EVERY_SECONDS:
            # Written once a minute at most, not on every request; and beside it, not on
            # its time: a write waits for the writer before it (SQLite's lock, a locked row).
            self._last_recorded[prefix] = now
            recording = asyncio.create_task(_record_use(db, caller.key_id))
            self._recording.add(recording)
            recording.add_done_callback(self._recording.discard)
        return caller

    async def settle(self) -> None:
        """Waits for the uses being recorded (the lifespan's end)."""
        await asyncio.gather(*self._recording, return_exceptions=True)

    def forget(self, prefix: str) -> None:
        """Believes nothing more of the key with this prefix (it was revoked)."""
        self._known.pop(prefix, None)


async def _record_use(db: Database, key_id: int) -> None:
    # Busy, timed out, or no server takes writes (a failover): the use is recorded next time.
    with contextlib.suppress(*DATABASE_ERRORS, DatabaseUnavailable):
        await db.fetch(_RECORD_USE, {"key_id": key_id, "now": utcnow()}, write=True)


def _caller(row: Any, prefix: str) -> Caller:
    return Caller(row["id"], row["name"], row["scope"], prefix)


async def get_keyring(request: Request) -> Keyring:
    """The process's `Keyring`, made by the lifespan."""
    keyring: Keyring = request.app.state.keyring
    return keyring


KeyringDep = Annotated[Keyring, Depends(get_keyring)]
