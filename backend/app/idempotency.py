"""Idempotent retries: a write sent again with the same `Idempotency-Key` gets the first answer again.

One transaction holds the look-up of the key, the write and its answer
(`Database.atomic`), so a crash at any moment leaves either nothing (the
retry writes) or all of it (the retry gets the first answer). A record is
kept per API key and Idempotency-Key, so every instance of the service sees
it. While a request with a key is being answered, a retry of it is a 409 at
once: in this process a set of the keys in flight tells, across instances on
PostgreSQL a transaction-scoped advisory lock on the key (on SQLite writers
take turns: another process's retry waits for the first and replays it). The
same key with another request is a 422. Answers are kept for
`idempotency_ttl_seconds`.
"""

import hashlib
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import bindparam, delete
from sqlmodel import col

from app import logs, metrics
from app.config import get_settings
from app.db import INTEGRITY_ERRORS, Atomic, Database, Found, Locked
from app.errors import (
    PROBLEM_MEDIA_TYPE,
    AppError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidParameter,
    error_response,
)
from app.keys import Caller
from app.models import IdempotencyRecord, utcnow

logger = logging.getLogger(__name__)

HEADER = "idempotency-key"
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, as the draft standard suggests
REPLAYED_HEADERS = ("location", "etag", "content-type")
# A record without an answer was a claim of the version before one transaction; this old, its
# request died: a retry may take it over.
ABANDONED_AFTER = timedelta(minutes=2)
PRUNE_EVERY = 100  # keyed writes, on average; then expired answers are deleted

# (database, API key id, Idempotency-Key) of the requests being answered in this process.
_in_flight: set[tuple[int, int, str]] = set()


def _fingerprint(request: Request, payload: Any) -> str:
    query = sorted(request.query_params.multi_items())
    request_as_sent = {"method": request.method, "path": request.url.path, "query": query, "body": payload}
    canonical = json.dumps(request_as_sent, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def lock_for(caller_id: int, key: str) -> int:
    """The advisory lock of an API key's Idempotency-Key: a signed 64-bit hash of both."""
    digest = hashlib.blake2b(f"{caller_id}\0{key}".encode(), digest_size=8, person=b"songbook-idem").digest()
    return int.from_bytes(digest, "big", signed=True)


async def run_once(
    request: Request,
    *,
    db: Database,
    caller: Caller | None,
    payload: Any,
    write: Callable[[], Awaitable[Response]],
    on_session: bool = False,
) -> Response:
    """`write()`'s answer; with an Idempotency-Key, the first answer to this key, whatever is retried.

    `payload` is the request's validated input: the same input, however
    formatted, is the same request. `on_session` for a write that works on
    a session (`Database.transaction`), as a batch does.
    """
    key = request.headers.get(HEADER)
    if key is None or caller is None:
        return await _answer(write)
    if not _VALID_KEY.fullmatch(key):
        raise InvalidParameter("header", "Idempotency-Key", "must be 1 to 255 printable ASCII characters")
    fingerprint = _fingerprint(request, payload)
    ttl_seconds = (await get_settings(request)).idempotency_ttl_seconds
    in_flight = (id(db), caller.key_id, key)
    if in_flight in _in_flight:
        raise _in_use()
    _in_flight.add(in_flight)
    try:
        # Pruned now and then, by chance: no count to keep, in a process or across instances.
        if random.randrange(PRUNE_EVERY) == 0:  # noqa: S311 (not a secret)
            await db.fetch(_PRUNE, {"now": utcnow()}, write=True)
        this = {"caller_id": caller.key_id, "idempotency_key": key}
        lock = lock_for(caller.key_id, key)
        try:
            # A key seen for the first time (most are): the look-up is part of the block's first round trip.
            async with db.atomic(lock=lock, unless=(_READ, this), on_session=on_session) as unit:
                return await _write_and_keep(unit, write, this=this, fingerprint=fingerprint, ttl=ttl_seconds)
        except Found:
            # A record: replayed, or (expired, abandoned) replaced. The lock is taken again.
            async with db.atomic(lock=lock, on_session=on_session) as unit:
                return await _once(unit, write, this=this, fingerprint=fingerprint, ttl=ttl_seconds)
    except Locked:
        raise _in_use() from None
    except INTEGRITY_ERRORS:
        records = await db.fetch(_READ, {"caller_id": caller.key_id, "idempotency_key": key})
        if not records:
            raise
        return _replay(records[0], fingerprint)
    finally:
        _in_flight.discard(in_flight)


async def _once(
    unit: Atomic, write: Callable[[], Awaitable[Response]], *, this: dict[str, Any], fingerprint: str, ttl: int
) -> Response:
    """The answer kept for this key, or `write()`'s, kept: in the block's transaction, under the key's lock."""
    records = await unit.fetch(_READ, this)
    if records and not _claimable(records[0], utcnow()):
        return _replay(records[0], fingerprint)
    return await _write_and_keep(unit, write, this=this, fingerprint=fingerprint, ttl=ttl, replacing=bool(records))


async def _write_and_keep(
    unit: Atomic,
    write: Callable[[], Awaitable[Response]],
    *,
    this: dict[str, Any],
    fingerprint: str,
    ttl: int,
    replacing: bool = False,
) -> Response:
    """`write()`'s answer, kept for this key (`replacing` a record that no longer answers) as the block commits."""
    now = utcnow()
    response = await _answer(write)
    if response.status_code >= 400:
        # A refused write leaves nothing; a failed one (5xx) leaves no answer either: a retry does it again.
        await unit.undo()
        if response.status_code >= 500:
            return response
    if replacing:
        await unit.fetch(_FORGET, this)
    answer = this | {"fingerprint": fingerprint, "now": now, "until": now + timedelta(seconds=ttl)}
    # Kept and committed in one go (`Atomic.commit`). If another request kept an answer for
    # this key since we looked (an instance of the version before one transaction), the insert
    # fails, the block is rolled back and that answer is the one (`run_once`).
    await unit.commit(_KEEP, answer | _kept(response))
    return response


def _claimable(record: Mapping[str, Any], now: datetime) -> bool:
    """Whether a record no longer answers: its answer expired, or its claim was abandoned."""
    if record["expires_at"] < now:
        return True
    return record["status"] is None and record["claimed_at"] < now - ABANDONED_AFTER


def _in_use() -> IdempotencyKeyInUse:
    metrics.idempotency_conflicts.inc()
    logger.info("idempotency key in use")
    return IdempotencyKeyInUse("A request with this Idempotency-Key is still being answered; retry shortly.")


def _replay(record: Mapping[str, Any], fingerprint: str) -> Response:
    """The answer kept for this key, if it is this request's and there is one yet."""
    if record["request_hash"] != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for another request; use a new key for a new request."
        )
    if record["status"] is None:
        raise _in_use()  # claimed by an instance of the version before one transaction
    metrics.idempotent_replays.inc()
    logger.info("idempotent replay")
    headers = json.loads(record["response_headers"] or "{}") | {"Idempotent-Replayed": "true"}
    body = record["response_body"]
    if headers.get("content-type") == PROBLEM_MEDIA_TYPE:
        # A problem names the request that answers it, as its X-Request-ID does: this retry.
        problem = json.loads(body) | {"request_id": logs.request_id()}
        body = json.dumps(problem, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status_code=record["status"], headers=headers)


def _kept(response: Response) -> dict[str, Any]:
    """What is kept of an answer, to replay it."""
    headers = {name: value for name, value in response.headers.items() if name in REPLAYED_HEADERS}
    return {
        "answer_status": response.status_code,
        "answer_headers": json.dumps(headers),
        "answer_body": bytes(response.body).decode(),
    }


async def _answer(write: Callable[[], Awaitable[Response]]) -> Response:
    """The write's answer, its errors included, as the response to keep."""
    try:
        return await write()
    except AppError as exc:
        return error_response(exc)


# Each a statement of its own, compiled once (see `Database`).
_RECORD = (
    col(IdempotencyRecord.api_key_id) == bindparam("caller_id"),
    col(IdempotencyRecord.key) == bindparam("idempotency_key"),
)
_READ = sa.select(
    col(IdempotencyRecord.request_hash),
    col(IdempotencyRecord.status),
    col(IdempotencyRecord.response_headers),
    col(IdempotencyRecord.response_body),
    col(IdempotencyRecord.claimed_at),
    col(IdempotencyRecord.expires_at),
).where(*_RECORD)
_PRUNE = delete(IdempotencyRecord).where(col(IdempotencyRecord.expires_at) < bindparam("now"))
_FORGET = delete(IdempotencyRecord).where(*_RECORD)
_KEEP = sa.insert(IdempotencyRecord).values(
    api_key_id=bindparam("caller_id"),
    key=bindparam("idempotency_key"),
    request_hash=bindparam("fingerprint"),
    status=bindparam("answer_status"),
    response_headers=bindparam("answer_headers"),
    response_body=bindparam("answer_body"),
    claimed_at=bindparam("now"),
    expires_at=bindparam("until"),
)
