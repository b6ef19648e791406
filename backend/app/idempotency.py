"""Idempotent retries: a write sent again with the same `Idempotency-Key` gets the first answer again.

One transaction holds the look-up of the key, the write and its answer
(`Database.atomic`), so a crash at any moment leaves either nothing (the
retry writes) or all of it (the retry gets the first answer). A record is
kept per API key and Idempotency-Key, so every instance of the service sees
it. While a request with a key is being answered, a retry of it is a 409 at
once: in this process a set of the keys in flight tells, across instances on
PostgreSQL a transaction-scoped advisory lock on the key (on SQLite writers
take turns: another process's retry waits for the first and replays it); a
retry that finds the key taken but answered (by another retry) replays the
answer. The same key with another request is a 422. Answers are kept for
`idempotency_ttl_seconds`. Writes let through without an API key share one
set of keys (`NO_API_KEY`).

A write known in full before it is made (a create whose id is set aside,
`Foreseen`) is kept with its answer in one statement on PostgreSQL: the
lock, the answer and the row, one round trip as the write alone is, where
the block above takes five (backend/README.md, "Safe writes").
"""

import functools
import hashlib
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import BigInteger, bindparam, delete, func, literal_column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlmodel import col

from app import logs, metrics
from app.config import get_settings
from app.db import INTEGRITY_ERRORS, Atomic, Database, Locked
from app.errors import (
    PROBLEM_MEDIA_TYPE,
    AppError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidParameter,
    error_response,
)
from app.fields import utcnow
from app.keys import Caller
from app.models import IdempotencyRecord

logger = logging.getLogger(__name__)

HEADER = "idempotency-key"
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, as the draft standard suggests
REPLAYED_HEADERS = ("location", "etag", "content-type")
# A record without an answer was a claim of the version before one transaction; this old, its
# request died: a retry may take it over.
ABANDONED_AFTER = timedelta(minutes=2)
NO_API_KEY = 0  # the records of writes made without an API key: no key has this id
PRUNE_EVERY = 100  # keyed writes, on average; then expired answers are deleted

# (database, API key id, Idempotency-Key) of the requests being answered in this process.
_in_flight: set[tuple[int, int, str]] = set()


def _fingerprint(request: Request, payload: Any, query: Iterable[tuple[str, str]]) -> str:
    request_as_sent = {"method": request.method, "path": request.url.path, "query": sorted(query), "body": payload}
    canonical = json.dumps(request_as_sent, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Foreseen:
    """A write known in full before it is made: the `row` it adds to `table`, and its `response`.

    `written` is told once the row is written (not when an answer is replayed).
    """

    table: sa.Table
    row: Mapping[str, Any]
    response: Response
    written: Callable[[], None] = lambda: None


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
    foresee: Callable[[], Awaitable[Foreseen | None]] | None = None,
    query: Iterable[tuple[str, str]] = (),
) -> Response:
    """`write()`'s answer; with an Idempotency-Key, the first answer to this key, whatever is retried.

    `payload` and `query` are the request's validated input, body and query
    parameters: the same input, however formatted, is the same request. `on_session` for a write that works on
    a session (`Database.transaction`), as a batch does. `foresee`, for a
    keyed request, gives the write in full before it is made, if it can.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return await _answer(write)
    if not _VALID_KEY.fullmatch(key):
        raise InvalidParameter("header", "Idempotency-Key", "must be 1 to 255 printable ASCII characters")
    # Writes let through without an API key (SONGBOOK_REQUIRE_WRITE_KEY=false) share one set of keys.
    caller_id = caller.key_id if caller is not None else NO_API_KEY
    fingerprint = _fingerprint(request, payload, query)
    ttl_seconds = (await get_settings(request)).idempotency_ttl_seconds
    this = {"caller_id": caller_id, "idempotency_key": key}
    in_flight = (id(db), caller_id, key)
    if in_flight in _in_flight:
        return await _replay_if_answered(db, this, fingerprint)
    _in_flight.add(in_flight)
    try:
        # Pruned now and then, by chance: no count to keep, in a process or across instances.
        if random.randrange(PRUNE_EVERY) == 0:  # noqa: S311 (not a secret)
            await db.fetch(_PRUNE, {"now": utcnow()}, write=True)
        foreseen = await foresee() if foresee is not None and db.dialect == "postgresql" else None
        if foreseen is not None:
            answered = await _foreseen_once(db, foreseen, this=this, fingerprint=fingerprint, ttl=ttl_seconds)
            if answered is not None:
                return answered
        async with db.atomic(lock=lock_for(caller_id, key), on_session=on_session) as unit:
            return await _once(unit, write, caller_id=caller_id, key=key, fingerprint=fingerprint, ttl=ttl_seconds)
    except Locked:
        return await _replay_if_answered(db, this, fingerprint)
    finally:
        _in_flight.discard(in_flight)


async def _foreseen_once(
    db: Database, foreseen: Foreseen, *, this: dict[str, Any], fingerprint: str, ttl: int
) -> Response | None:
    """The foreseen write made and its answer kept in one statement, or the answer kept for this key.

    None if a constraint refused the row (the song is there already, or its id is): the
    statement then wrote nothing, and the general way answers it.
    """
    now = utcnow()
    params = this | _record(fingerprint, now, ttl) | _kept(foreseen.response)
    params |= {"lock": lock_for(this["caller_id"], this["idempotency_key"])}
    params |= {f"row_{name}": value for name, value in foreseen.row.items()}
    try:
        written = await db.fetch(_kept_with(foreseen.table, tuple(foreseen.row)), params, write=True)
    except INTEGRITY_ERRORS:
        return None
    if not written:
        # The key's lock is another request's, or its record answers still: as `Locked` is.
        return await _replay_if_answered(db, this, fingerprint)
    foreseen.written()
    return foreseen.response


async def _replay_if_answered(db: Database, this: dict[str, Any], fingerprint: str) -> Response:
    """The answer kept for this key, for a request that found it taken: 409 if there is none yet.

    What holds the key may be another retry of a request answered already (they
    take turns under the lock too): that answer is this one's, without waiting.
    """
    records = await db.fetch(_READ, this)
    if records and not _claimable(records[0], utcnow()):
        return _replay(records[0], fingerprint)
    raise _in_use()


async def _once(
    unit: Atomic, write: Callable[[], Awaitable[Response]], *, caller_id: int, key: str, fingerprint: str, ttl: int
) -> Response:
    """The kept answer to this key, or `write()`'s, kept: in the block's transaction, under the key's lock."""
    this = {"caller_id": caller_id, "idempotency_key": key}
    now = utcnow()
    records = await unit.fetch(_READ, this)
    if records and not _claimable(records[0], now):
        return _replay(records[0], fingerprint)
    response = await _answer(write)
    if response.status_code >= 400:
        # A refused write leaves nothing; a failed one (5xx) leaves no answer either: a retry does it again.
        await unit.undo()
        if response.status_code >= 500:
            return response
    answer = this | _record(fingerprint, now, ttl) | _kept(response)
    if await unit.fetch(_keep(unit.database.dialect), answer):
        return response
    # Another request kept an answer for this key since we read (an instance of the version
    # before one transaction, or one that committed between our look-up's snapshot and
    # its lock): ours is undone, and theirs is the answer.
    await unit.undo()
    records = await unit.fetch(_READ, this)
    if records:
        return _replay(records[0], fingerprint)
    raise _in_use()


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


def _record(fingerprint: str, now: datetime, ttl: int) -> dict[str, Any]:
    """The values of a record kept `now`, but for its answer (`_kept`)."""
    return {
        "fingerprint": fingerprint,
        "now": now,
        "until": now + timedelta(seconds=ttl),
        "abandoned_before": now - ABANDONED_AFTER,
    }


def _kept(response: Response) -> dict[str, Any]:
    """What is kept of an answer, to replay it."""
    headers = {name: value for name, value in response.headers.items() if name in REPLAYED_HEADERS}
    return {
        "answer_status": response.status_code,
        "answer_headers": orjson.dumps(headers).decode(),
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


_RECORD_VALUES = {
    "api_key_id": "caller_id",
    "key": "idempotency_key",
    "request_hash": "fingerprint",
    "status": "answer_status",
    "response_headers": "answer_headers",
    "response_body": "answer_body",
    "claimed_at": "now",
    "expires_at": "until",
}  # each column of a kept record, and the parameter that gives it


def _over_claimable(statement: postgresql.Insert | sqlite.Insert) -> postgresql.Insert | sqlite.Insert:
    """`statement`, which adds a record, writing over the record of its key if that no longer answers."""
    claimable = (col(IdempotencyRecord.expires_at) < bindparam("now")) | (
        col(IdempotencyRecord.status).is_(None) & (col(IdempotencyRecord.claimed_at) < bindparam("abandoned_before"))
    )
    replaced = {
        name: getattr(statement.excluded, name)
        for name in ("request_hash", "status", "response_headers", "response_body", "claimed_at", "expires_at")
    }
    return statement.on_conflict_do_update(index_elements=["api_key_id", "key"], set_=replaced, where=claimable)


@functools.cache
def _keep(dialect: str) -> Insert:
    """Keeps an answer in one statement: a new record, or over one that no longer answers (`_claimable`)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values: dict[str, Any] = {column: bindparam(parameter) for column, parameter in _RECORD_VALUES.items()}
    return _over_claimable(insert(IdempotencyRecord).values(values)).returning(col(IdempotencyRecord.claimed_at))


@functools.cache
def _kept_with(table: sa.Table, columns: tuple[str, ...]) -> Insert:
    """Keeps an answer and writes the row it answers, in one statement (PostgreSQL): both, or neither.

    The key's lock is taken first, without waiting; the answer is kept as `_keep`
    keeps it, if the lock was had; the row is written only if the answer was
    kept, and a row that a constraint refuses fails the statement, answer and all.
    It returns one row if it wrote, none if not.
    """
    records = IdempotencyRecord.__table__  # type: ignore[attr-defined]
    answer = sa.select(
        *(bindparam(parameter, type_=records.c[column].type) for column, parameter in _RECORD_VALUES.items())
    ).where(func.pg_try_advisory_xact_lock(bindparam("lock", type_=BigInteger)))
    kept = (
        _over_claimable(postgresql.insert(IdempotencyRecord).from_select(list(_RECORD_VALUES), answer))
        .returning(literal_column("1"))
        .cte("kept")
    )
    row = sa.select(*(bindparam(f"row_{name}", type_=table.c[name].type) for name in columns)).select_from(kept)
    return sa.insert(table).from_select(list(columns), row).add_cte(kept).returning(literal_column("1"))
