"""Reads on streaming replicas, never staler than a bound, and read-your-writes for the client that wrote.

With `SONGBOOK_READ_REPLICA_URLS`, the reads of a `GET` or `HEAD` request
(a song, pages, searches, artists, exports) go to a replica. Everything else
goes to the primary: writes and the reads a write makes (a duplicate's id,
the version a 412 names), any request with `If-Match`, API keys' checks (a
key just made works at once), `/readyz`, and the commands. The request
decides, not the statement: `ReadRouting` (an ASGI middleware) notes what
the request may read where, in a context variable, and `db.Database` asks
`Replicas.choose` for each read, on its hot path and its session path alike.

**How stale a replica is** is measured by WAL positions (LSNs), not by
timestamps: on an idle primary `pg_last_xact_replay_timestamp()` ages for
ever. Every `POLL_SECONDS` a task of the process asks the primary for
`pg_current_wal_lsn()` and, `REPLICA_DELAY_SECONDS` later, each replica for
`pg_last_wal_replay_lsn()`, on connections of their own (a busy pool does
not delay the measure; a slow server delays no other's). The
primary's answers are kept with the moment each was asked for, over the
bound and a little more. A replica that has replayed the LSN the primary had
at instant t holds everything committed before t: its data are at most
`now - t` old. Its `fresh_as_of` is the latest such t, and a read may go to
it while `now - fresh_as_of` is within `SONGBOOK_REPLICA_MAX_LAG_MS`. That
costs the request one clock reading and a comparison, no query. The bound is
conservative: it overstates a replica's lag by the delay between the two
questions, and under a steady stream of writes a replica more than that
behind by up to one poll interval more (the primary's position between two
polls is not known). And it needs no news to take a replica out: one that stops replaying,
stops answering, or whose poller stops, ages past the bound by itself.

A replica whose statement fails on a lost connection is left out at once
(until a poll finds it replaying again) and the read is done on the primary;
any other error of a replica's read is answered by the primary too. With no
replica usable, reads go to the primary. While the primary does not answer
the poller, no replica's freshness can be known: they age out as well.

**Read-your-writes.** The answer to a request that wrote (any status below
500) carries `Songbook-Read-After: <LSN>`, the primary's WAL position after
the write (one `SELECT pg_current_wal_lsn()` on the primary, for a request
that wrote; none for reads). A read that sends it back is served by a
replica only if that replica had replayed at least that LSN at the last
poll, else by the primary. The token is stateless (any instance honours any
instance's token) and opaque to clients: send back the last one received. The
same token comes as a cookie (`songbook_read_after`) that lasts the bound, for
browsers: a form's POST answered by a redirect, then the page it leads to. A
read without either may be stale, by at most the bound.

Only on PostgreSQL: the settings refuse replicas with a SQLite database.
"""

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import asyncpg
from fastapi import FastAPI
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.config import Settings
from app.errors import driver_says

logger = logging.getLogger(__name__)

HEADER = "Songbook-Read-After"
_HEADER = HEADER.lower().encode()
# The same token as a cookie, for browsers: a form's POST answered by a redirect, then the GET of the
# page it leads to, which no script can give a header. Lasts the bound.
COOKIE = "songbook_read_after"
_COOKIE = COOKIE.encode()
_IF_MATCH = b"if-match"
_READS = frozenset({"GET", "HEAD"})

POLL_SECONDS = 0.1
REPLICA_DELAY_SECONDS = 0.02  # after the primary's answer
POLL_TIMEOUT_SECONDS = 1.0
HISTORY_MARGIN_SECONDS = 1.0  # the primary's positions are kept this much longer than the bound
LSN_TIMEOUT_SECONDS = 2.0  # for the token of a write: past it, the answer goes without one
NEVER = float("-inf")

# Positions as bytes since the start of the WAL: integers compare and subtract.
PRIMARY_LSN = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
# -1 for a server that is not replaying (not a standby, or promoted): it is no replica of ours.
REPLAYED_LSN = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, -1)"
    " ELSE -1 END"
)
_LSN = re.compile(rb"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_POLL_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: `16/B374D848`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: bytes) -> int | None:
    """The LSN `format_lsn` wrote; None for anything else."""
    match = _LSN.fullmatch(text.strip())
    return (int(match[1], 16) << 32) + int(match[2], 16) if match else None


@dataclass(eq=False)
class Watch:
    """The poller's own connection to one server, made again after any failure."""

    connect: Connect
    connection: asyncpg.Connection | None = None

    async def ask(self, query: str) -> int | None:
        """The query's one integer; None if the server did not answer in time."""
        try:
            async with asyncio.timeout(POLL_TIMEOUT_SECONDS):
                if self.connection is None or self.connection.is_closed():
                    self.connection = await self.connect()
                return int(await self.connection.fetchval(query))
        except _POLL_ERRORS:
            self.close()
            return None

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.terminate()


@dataclass(eq=False)
class Replica:
    """One read replica: its pools for reads (made by `db`), and how far it has replayed."""

    name: str  # host:port, for the logs and the metrics
    pool: asyncpg.Pool
    turns: asyncio.Semaphore
    engine: AsyncEngine
    watch: Watch
    replayed: int = -1  # the LSN it had replayed at the last poll
    fresh_as_of: float = NEVER  # (monotonic) it holds everything the primary had committed then
    usable: bool = False  # at the last poll, for the logs and the metrics
    sessionmaker: async_sessionmaker[AsyncSession] = field(init=False)
    reads: Counter = field(init=False)  # songbook_replica_reads, this replica's

    def __post_init__(self) -> None:
        self.sessionmaker = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self.reads = metrics.replica_reads.labels(self.name)

    async def close(self) -> None:
        self.watch.close()
        await self.pool.close()
        await self.engine.dispose()


@dataclass(slots=True)
class _Request:
    """What the request being answered may read where, and whether it wrote."""

    to_replica: bool  # a GET or HEAD without If-Match
    after: int = 0  # the LSN its Songbook-Read-After names
    wrote: "Replicas | None" = None


_current: ContextVar[_Request | None] = ContextVar("songbook_reads", default=None)


def read_anywhere() -> None:
    """Lets the reads of the current context go to a replica, as a GET's do: for work done in the background."""
    _current.set(_Request(to_replica=True))


class Replicas:
    """The read replicas of one process, the task that polls how far each has replayed, and the choice of one."""

    def __init__(self, replicas: Sequence[Replica], *, primary: asyncpg.Pool, watch: Connect, max_lag_ms: int) -> None:
        self.replicas = list(replicas)
        self.max_lag = max_lag_ms / 1000
        self._primary = primary
        self._watch = Watch(watch)
        self._history: deque[tuple[float, int]] = deque()  # the primary's (moment asked, LSN)
        self._next = 0
        self._polling: list[asyncio.Task[None]] = []
        self._sampled = asyncio.Event()  # set, and replaced, at each of the primary's answers

    def choose(self) -> Replica | None:
        """A replica for a read of the current request, in turn; None if it must go to the primary."""
        request = _current.get()
        if request is None or not request.to_replica:
            return None
        oldest = time.monotonic() - self.max_lag
        for _ in self.replicas:
            self._next = (self._next + 1) % len(self.replicas)
            replica = self.replicas[self._next]
            if replica.fresh_as_of >= oldest and replica.replayed >= request.after:
                return replica
        return None

    def wrote(self) -> None:
        """Notes that the current request writes: its answer will carry the primary's LSN."""
        request = _current.get()
        if request is not None:
            request.wrote = self

    def failed(self, replica: Replica, exc: BaseException, *, lost: bool) -> None:
        """A read on `replica` failed (and goes to the primary); one that `lost` its connection leaves it out."""
        if lost:
            replica.fresh_as_of = NEVER
        logger.warning("read replica %s failed a read (%s): the primary answers it", replica.name, driver_says(exc))

    async def written_lsn(self) -> int | None:
        """The primary's LSN now: a token for the answer of a request that wrote. None if it does not answer."""
        try:
            async with asyncio.timeout(LSN_TIMEOUT_SECONDS):
                return int(await self._primary.fetchval(PRIMARY_LSN))
        except _POLL_ERRORS as exc:
            logger.warning("no %s token: the primary did not tell its LSN (%s)", HEADER, driver_says(exc))
            return None

    def start(self) -> None:
        """Polls the primary, and each replica right after each of the primary's answers, each in a
        task of its own: a server slow to answer delays no other's measure."""
        self._polling = [
            asyncio.create_task(self._poll_primary_forever()),
            *(asyncio.create_task(self._poll_forever(replica)) for replica in self.replicas),
        ]

    async def _poll_primary_forever(self) -> None:
        while True:
            started = time.monotonic()
            await self.poll_primary()
            sampled, self._sampled = self._sampled, asyncio.Event()
            sampled.set()
            await asyncio.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - started)))

    async def _poll_forever(self, replica: Replica) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2 * POLL_SECONDS):  # the primary silent: poll all the same
                    await self._sampled.wait()
            # Asked shortly after the primary: under a stream of writes, a replica that keeps up has
            # replayed the primary's newest position by then, and the bound is that short. Asked at
            # once, it had not yet, and the bound went back to the position before: a poll earlier.
            await asyncio.sleep(REPLICA_DELAY_SECONDS)
            await self.poll(replica)

    async def close(self) -> None:
        for task in self._polling:
            task.cancel()
        await asyncio.gather(*self._polling, return_exceptions=True)
        self._watch.close()
        for replica in self.replicas:
            await replica.close()

    async def poll_primary(self) -> None:
        """The primary's LSN, kept with the moment it was asked for."""
        asked = time.monotonic()  # before the question: the primary had at least this LSN then
        primary = await self._watch.ask(PRIMARY_LSN)
        if primary is not None:
            self._history.append((asked, primary))
            while self._history[0][0] < asked - self.max_lag - HISTORY_MARGIN_SECONDS:
                self._history.popleft()

    async def poll(self, replica: Replica) -> None:
        """How far `replica` has replayed, and so how fresh it is.

        Whichever was asked first, the replica's answer or the primary's: a replica
        only goes forward, so once it has replayed what the primary had at t, it
        holds all that was committed before t.
        """
        self._update(replica, await replica.watch.ask(REPLAYED_LSN))

    def _update(self, replica: Replica, lsn: int | None) -> None:
        if lsn is not None and lsn < 0:
            replica.fresh_as_of = NEVER  # not replaying: whatever it holds, it is not following the primary
        elif lsn is not None:
            replica.replayed = lsn
            # The latest moment at which the primary had no more than the replica has replayed.
            for asked, primary in reversed(self._history):
                if primary <= lsn:
                    replica.fresh_as_of = max(replica.fresh_as_of, asked)
                    break
        # Unanswered: nothing learnt, and the replica ages towards the bound.
        lag = time.monotonic() - replica.fresh_as_of
        usable = lag <= self.max_lag
        if usable != replica.usable:
            replica.usable = usable
            if usable:
                logger.info("read replica %s is used: within %d ms of the primary", replica.name, lag * 1000)
            else:
                logger.warning("read replica %s is left out: %s", replica.name, self._why_not(lsn))
        known = self._history and replica.replayed >= 0
        behind = max(0, self._history[-1][1] - replica.replayed) if known else None
        metrics.observe_replica(replica.name, lag if lag != float("inf") else None, behind, usable)

    def _why_not(self, lsn: int | None) -> str:
        if lsn is None:
            return "it does not answer"
        if lsn < 0:
            return "it is not replaying (not a standby, or promoted)"
        if not self._history or self._history[-1][0] < time.monotonic() - self.max_lag:
            return "the primary does not answer: how far behind it is cannot be known"
        return "it is behind by more than the bound"

    def usable(self) -> list[Replica]:
        """The replicas a read without a token may go to now."""
        oldest = time.monotonic() - self.max_lag
        return [replica for replica in self.replicas if replica.fresh_as_of >= oldest]


def install(app: FastAPI, settings: Settings) -> None:
    """With read replicas, `ReadRouting`: which reads of each request may go to one; the tokens of writes."""
    if settings.replica_urls:
        app.add_middleware(ReadRouting, max_lag_ms=settings.replica_max_lag_ms)


class ReadRouting:
    """Notes, for each request, whether its reads may go to a replica, and gives the answer of one that wrote
    its `Songbook-Read-After` token, as a header and as a cookie that lasts the bound."""

    def __init__(self, app: ASGIApp, *, max_lag_ms: int) -> None:
        self.app = app
        # Once the bound has passed since a write, every replica still used has it: the cookie can go.
        self._cookie = f"; Max-Age={math.ceil(max_lag_ms / 1000)}; Path=/; HttpOnly; SameSite=Lax"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _request(scope)
        reset = _current.set(request)

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start" and request.wrote is not None and message["status"] < 500:
                lsn = await request.wrote.written_lsn()
                if lsn is not None:
                    token = format_lsn(lsn)
                    cookie = (b"set-cookie", f"{COOKIE}={token}{self._cookie}".encode())
                    message["headers"] = [*message.get("headers", ()), (_HEADER, token.encode()), cookie]
            await send(message)

        try:
            await self.app(scope, receive, send_with_token)
        finally:
            _current.reset(reset)


def _request(scope: Scope) -> _Request:
    request = _Request(to_replica=scope["method"] in _READS)
    if request.to_replica:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        for name, value in headers:
            if name == _IF_MATCH:
                request.to_replica = False
            elif name == _HEADER or (name == b"cookie" and _COOKIE in value):
                lsn = parse_lsn(value if name == _HEADER else _cookie_value(value))
                if lsn is None:
                    request.to_replica = False  # a token not ours: the client asked for fresh data
                else:
                    request.after = max(request.after, lsn)
    return request


def _cookie_value(header: bytes) -> bytes:
    """The read-after cookie's value in a `Cookie` header."""
    for pair in header.split(b";"):
        name, _, value = pair.strip().partition(b"=")
        if name == _COOKIE:
            return value
    return b""
