"""Idempotent retries: a write sent again with the same `Idempotency-Key` gets the first answer again.

The key is claimed in the database before the write (one row per API key and
Idempotency-Key, so every instance of the service sees it), and the answer is
stored after it. A retry of a finished write replays the answer; a retry
while the first is still running is a 409; the same key with another request
is a 422. Answers are kept for `idempotency_ttl_seconds`.
"""

import contextlib
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import write_connection
from app.errors import AppError, InvalidParameter, problem_response
from app.keys import Caller
from app.models import IdempotencyRecord, utcnow

HEADER = "idempotency-key"
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, as the draft standard suggests
REPLAYED_HEADERS = ("location", "etag", "content-type")
# A claim this old with no answer belongs to a request that died: a retry may take it over.
ABANDONED_AFTER = timedelta(minutes=2)
PRUNE_EVERY = 100  # claims; then expired answers are deleted
CLAIM_ATTEMPTS = 3

_claims = 0


class IdempotencyKeyInUse(AppError):
    status_code = 409
    code = "idempotency-key-in-use"


class IdempotencyKeyReused(AppError):
    status_code = 422
    code = "idempotency-key-reused"


def _fingerprint(request: Request, payload: Any) -> str:
    query = sorted(request.query_params.multi_items())
    request_as_sent = {"method": request.method, "path": request.url.path, "query": query, "body": payload}
    canonical = json.dumps(request_as_sent, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def run_once(
    request: Request,
    caller: Caller | None,
    payload: Any,
    write: Callable[[], Awaitable[Response]],
    *,
    session: AsyncSession | None = None,
) -> Response:
    """`write()`'s answer; with an Idempotency-Key, the first answer to this key, whatever is retried.

    `payload` is the request's validated input: the same input, however
    formatted, is the same request. The key is kept through `session`, the
    route's if it has one (so that it holds one connection at a time), else
    one of its own: a write without a key opens none.
    """
    key = request.headers.get(HEADER)
    if key is None or caller is None:
        return await _answer(write)
    if not _VALID_KEY.fullmatch(key):
        raise InvalidParameter("header", "Idempotency-Key", "must be 1 to 255 printable ASCII characters")
    if session is None:
        async with request.app.state.sessionmaker() as own_session:
            return await _run_once(request, own_session, caller, key, payload, write)
    return await _run_once(request, session, caller, key, payload, write)


async def _run_once(
    request: Request,
    session: AsyncSession,
    caller: Caller,
    key: str,
    payload: Any,
    write: Callable[[], Awaitable[Response]],
) -> Response:
    fingerprint = _fingerprint(request, payload)
    ttl = request.app.state.settings.idempotency_ttl_seconds
    claimed_at, record = await _claim(session, caller.key_id, key, fingerprint, ttl)
    if record is not None:
        if record.request_hash != fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used for another request; use a new key for a new request."
            )
        if record.status is None:
            raise IdempotencyKeyInUse(
                "A request with this Idempotency-Key is still being answered; retry shortly.",
                headers={"Retry-After": "1"},
            )
        headers = json.loads(record.response_headers or "{}") | {"Idempotent-Replayed": "true"}
        return Response(record.response_body, status_code=record.status, headers=headers)
    this = [*_this(caller.key_id, key), col(IdempotencyRecord.claimed_at) == claimed_at]
    try:
        response = await _answer(write)
    except BaseException:
        # No answer to keep (the database failed, say): free the key for the retry.
        with contextlib.suppress(Exception):
            await _store(session, this, None)
        raise
    await _store(session, this, None if response.status_code >= 500 else response)
    return response


async def _store(session: AsyncSession, claim: list[Any], response: Response | None) -> None:
    """Keeps the answer to replay; with none (a failure the retry should try again), frees the key.

    Only while the claim is this request's: one taken over since is left alone.
    A crash between the write and this leaves the claim without an answer: after
    `ABANDONED_AFTER`, a retry does the write again (a create then finds its song there).
    """
    await session.close()  # whatever the write left open: this is a transaction of its own
    await write_connection(session)
    if response is None:
        await session.exec(delete(IdempotencyRecord).where(*claim))
    else:
        headers = {name: value for name, value in response.headers.items() if name in REPLAYED_HEADERS}
        await session.exec(
            update(IdempotencyRecord)
            .where(*claim, col(IdempotencyRecord.status).is_(None))
            .values(
                status=response.status_code,
                response_headers=json.dumps(headers),
                response_body=bytes(response.body).decode(),
            )
        )
    await session.commit()


async def _answer(write: Callable[[], Awaitable[Response]]) -> Response:
    """The write's answer, its errors included, as the response to keep."""
    try:
        return await write()
    except AppError as exc:
        return problem_response(exc.status_code, exc.code, exc.detail, headers=exc.headers, **exc.extensions)


def _this(api_key_id: int, key: str) -> list[Any]:
    return [col(IdempotencyRecord.api_key_id) == api_key_id, col(IdempotencyRecord.key) == key]


async def _claim(
    session: AsyncSession, api_key_id: int, key: str, fingerprint: str, ttl_seconds: int
) -> tuple[datetime, IdempotencyRecord | None]:
    """Claims the key for this request: (when, None) if claimed, else the record of the request that has it."""
    global _claims
    for _ in range(CLAIM_ATTEMPTS):
        now = utcnow()
        await session.close()
        await write_connection(session)
        _claims += 1
        if _claims % PRUNE_EVERY == 0:
            await session.exec(delete(IdempotencyRecord).where(col(IdempotencyRecord.expires_at) < now))
        # An expired answer, or a claim whose request died, is taken over.
        await session.exec(
            delete(IdempotencyRecord).where(
                *_this(api_key_id, key),
                (col(IdempotencyRecord.expires_at) < now)
                | (
                    col(IdempotencyRecord.status).is_(None)
                    & (col(IdempotencyRecord.claimed_at) < now - ABANDONED_AFTER)
                ),
            )
        )
        try:
            await session.exec(
                insert(IdempotencyRecord).values(
                    api_key_id=api_key_id,
                    key=key,
                    request_hash=fingerprint,
                    claimed_at=now,
                    expires_at=now + timedelta(seconds=ttl_seconds),
                )
            )
            await session.commit()
            return now, None
        except IntegrityError:
            await session.rollback()
        record = (await session.exec(select(IdempotencyRecord).where(*_this(api_key_id, key)))).first()
        await session.commit()
        if record is not None:
            return now, record
        # Freed between our insert and our read (its request failed): claim it again.
    raise IdempotencyKeyInUse(
        "A request with this Idempotency-Key is being retried at the same time; retry shortly.",
        headers={"Retry-After": "1"},
    )
