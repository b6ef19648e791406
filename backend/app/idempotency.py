"""Idempotent retries: a write sent again with the same `Idempotency-Key` gets the first answer again.

The key is claimed in the database before the write (one row per API key and
Idempotency-Key, so every instance of the service sees it), and the answer is
stored after it. A retry of a finished write replays the answer; a retry
while the first is still running is a 409; the same key with another request
is a 422. Answers are kept for `idempotency_ttl_seconds`.
"""

import contextlib
import functools
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
from sqlalchemy import bindparam, delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlmodel import col

from app import logs, metrics
from app.config import get_settings
from app.db import Database
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
# A claim this old with no answer belongs to a request that died: a retry may take it over.
ABANDONED_AFTER = timedelta(minutes=2)
PRUNE_EVERY = 100  # claims, on average; then expired answers are deleted
CLAIM_ATTEMPTS = 3


def _fingerprint(request: Request, payload: Any) -> str:
    query = sorted(request.query_params.multi_items())
    request_as_sent = {"method": request.method, "path": request.url.path, "query": query, "body": payload}
    canonical = json.dumps(request_as_sent, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def run_once(
    request: Request,
    *,
    db: Database,
    caller: Caller | None,
    payload: Any,
    write: Callable[[], Awaitable[Response]],
) -> Response:
    """`write()`'s answer; with an Idempotency-Key, the first answer to this key, whatever is retried.

    `payload` is the request's validated input: the same input, however
    formatted, is the same request. The claim, the write and the answer take
    one turn at the database (`Database.bound`).
    """
    key = request.headers.get(HEADER)
    if key is None or caller is None:
        return await _answer(write)
    if not _VALID_KEY.fullmatch(key):
        raise InvalidParameter("header", "Idempotency-Key", "must be 1 to 255 printable ASCII characters")
    fingerprint = _fingerprint(request, payload)
    this = {"caller_id": caller.key_id, "idempotency_key": key}
    claim: dict[str, Any] | None = None
    try:
        async with db.bound():
            ttl_seconds = (await get_settings(request)).idempotency_ttl_seconds
            claimed_at, record = await _claim(db, this, fingerprint, ttl_seconds)
            if record is not None:
                return _replay(record, fingerprint)
            claim = this | {"claimed": claimed_at}
            response = await _answer(write)
            if response.status_code >= 500:
                await db.fetch(_FREE, claim, write=True)
            else:
                await db.fetch(_KEEP, claim | _kept(response), write=True)
            return response
    except BaseException:
        if claim is not None:
            # No answer kept (the database failed, say): free the key for the retry. On a
            # connection of its own, taken once the bound one is given back: that one may be dead.
            with contextlib.suppress(Exception):
                await db.fetch(_FREE, claim, write=True)
        raise


def _replay(record: Mapping[str, Any], fingerprint: str) -> Response:
    """The answer kept for this key, if it is this request's and there is one yet."""
    if record["request_hash"] != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for another request; use a new key for a new request."
        )
    if record["status"] is None:
        metrics.idempotency_conflicts.inc()
        logger.info("idempotency key in use")
        raise IdempotencyKeyInUse("A request with this Idempotency-Key is still being answered; retry shortly.")
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


# Each a statement of its own, compiled once (see `Database`). Only while the
# claim is this request's: one taken over since is left alone. A crash between
# the write and keeping its answer leaves the claim without one: after
# `ABANDONED_AFTER`, a retry does the write again (a create then finds its song there).
_RECORD = (
    col(IdempotencyRecord.api_key_id) == bindparam("caller_id"),
    col(IdempotencyRecord.key) == bindparam("idempotency_key"),
)
_CLAIM = (*_RECORD, col(IdempotencyRecord.claimed_at) == bindparam("claimed"))
_KEEP = (
    update(IdempotencyRecord)
    .where(*_CLAIM, col(IdempotencyRecord.status).is_(None))
    .values(
        status=bindparam("answer_status"),
        response_headers=bindparam("answer_headers"),
        response_body=bindparam("answer_body"),
    )
)
_FREE = delete(IdempotencyRecord).where(*_CLAIM)
_READ = sa.select(
    col(IdempotencyRecord.request_hash),
    col(IdempotencyRecord.status),
    col(IdempotencyRecord.response_headers),
    col(IdempotencyRecord.response_body),
).where(*_RECORD)
_PRUNE = delete(IdempotencyRecord).where(col(IdempotencyRecord.expires_at) < bindparam("now"))


@functools.cache
def _take(dialect: str) -> Insert:
    """Claims a key in one statement: a new one, or one whose answer expired or whose request died."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(IdempotencyRecord).values(
        api_key_id=bindparam("caller_id"),
        key=bindparam("idempotency_key"),
        request_hash=bindparam("fingerprint"),
        claimed_at=bindparam("now"),
        expires_at=bindparam("until"),
    )
    claimable = (col(IdempotencyRecord.expires_at) < bindparam("now")) | (
        col(IdempotencyRecord.status).is_(None) & (col(IdempotencyRecord.claimed_at) < bindparam("abandoned_before"))
    )
    taken_over = {
        "request_hash": statement.excluded.request_hash,
        "claimed_at": statement.excluded.claimed_at,
        "expires_at": statement.excluded.expires_at,
        "status": sa.null(),
        "response_headers": sa.null(),
        "response_body": sa.null(),
    }
    return statement.on_conflict_do_update(
        index_elements=["api_key_id", "key"], set_=taken_over, where=claimable
    ).returning(col(IdempotencyRecord.claimed_at))


async def _claim(
    db: Database, this: dict[str, Any], fingerprint: str, ttl_seconds: int
) -> tuple[datetime, Mapping[str, Any] | None]:
    """Claims the key for this request: (when, None) if claimed, else the record of the request that has it."""
    for _ in range(CLAIM_ATTEMPTS):
        now = utcnow()
        # Pruned now and then, by chance: no count to keep, in a process or across instances.
        if random.randrange(PRUNE_EVERY) == 0:  # noqa: S311 (not a secret)
            await db.fetch(_PRUNE, {"now": now}, write=True)
        claim = this | {
            "fingerprint": fingerprint,
            "now": now,
            "until": now + timedelta(seconds=ttl_seconds),
            "abandoned_before": now - ABANDONED_AFTER,
        }
        if await db.fetch(_take(db.dialect), claim, write=True):
            return now, None
        records = await db.fetch(_READ, this)
        if records:
            return now, records[0]
        # Freed between our claim and our read (its request failed): claim it again.
    metrics.idempotency_conflicts.inc()
    logger.info("idempotency key in use")
    raise IdempotencyKeyInUse("A request with this Idempotency-Key is being retried at the same time; retry shortly.")
