"""Logs in one format, JSON lines or console lines, for songbook's, uvicorn's and SQLAlchemy's records (structlog).

Two ways in, one way out:

- The access log (`AccessLog`), one record per request, is written as the
  same line the others get (in JSON, by orjson itself, see `AccessLog`), in
  batches: through the standard library's logging a record cost 16 µs,
  through structlog's own loggers 6 µs, in a tight loop; several times more
  in a loaded server.
- Every other record (songbook's modules, uvicorn, SQLAlchemy, asyncio) is
  the standard library's: `logging_config` renders it with structlog's
  `ProcessorFormatter`.

Both add the request's id, and its API key's id and name, to every record
written while the request runs (`current_request`).
"""

import asyncio
import logging
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TextIO, cast

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["console", "json"]


@dataclass(slots=True)
class RequestContext:
    """What every record written for a request carries."""

    request_id: str
    api_key_id: int | None = None
    api_key_name: str | None = None


# Set by the middleware while it serves a request; also in the request's scope under SCOPE_KEY.
current_request: ContextVar[RequestContext | None] = ContextVar("songbook_request", default=None)
SCOPE_KEY = "songbook.request"


def request_id() -> str | None:
    """The id of the request being served, if any."""
    context = current_request.get()
    return context.request_id if context is not None else None


def _add_request(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    context = current_request.get()
    if context is not None:
        event.setdefault("request_id", context.request_id)
        if context.api_key_id is not None:
            event.setdefault("api_key_id", context.api_key_id)
            event.setdefault("api_key_name", context.api_key_name)
    return event


def _json(value: Any, **options: Any) -> str:
    return orjson.dumps(value, **options).decode()


_LEVELS = {name.lower(): number for name, number in logging.getLevelNamesMapping().items()}


class _Timestamp:
    """Adds the time in ISO 8601, UTC, to the microsecond: as structlog's `TimeStamper(fmt="iso", utc=True)`
    writes it (but for its six digits, always there: `isoformat` leaves out a microsecond of 0), for a
    seventh of its cost in a loaded server (7 µs a record there), by formatting each second once."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one object, replaced whole: safe for every thread

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        formatted_second, formatted = self._second
        if second != formatted_second:
            formatted = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, formatted)
        event["timestamp"] = "%s.%06dZ" % (formatted, micro)  # noqa: UP031 (fewer instructions than a format spec in an f-string)
        return event


_TIMESTAMP = _Timestamp()


def _renderer(log_format: LogFormat) -> Processor:
    if log_format == "json":
        return structlog.processors.JSONRenderer(_json)
    colors = sys.stderr.isatty()
    # Tracebacks without the frames' local values: they hold keys, headers and the settings' URL.
    tracebacks = structlog.dev.RichTracebackFormatter(color_system="truecolor" if colors else None, show_locals=False)
    return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=tracebacks)


def _processors(log_format: LogFormat) -> list[Processor]:
    """What every record of the standard library's goes through before it is rendered."""
    shared: list[Processor] = [_add_request, structlog.processors.add_log_level, _TIMESTAMP]
    if log_format == "json":
        # A traceback is one string member of its record: one record, one line.
        shared.append(structlog.processors.format_exc_info)
    return shared


class AccessLog:
    """The access log: one record per request, rendered as every other record is, written in batches.

    Not through a structlog logger: in a loaded server its chain of calls took
    26 µs a record (thread CPU time), half of what the record cost; nor with a
    system call and a flush for each record, which cost as much again (CPU time
    a request, from /proc). A record waits at most `FLUSH_SECONDS`, or until
    `FLUSH_LINES` wait; outside an event loop, and at `flush`, it is written at once.

    In JSON, orjson writes the record itself, as structlog's `JSONRenderer` would
    (its fallback for other types is never needed: a record holds strings,
    numbers, booleans and None): 4,300 instructions a record instead of 12,100.
    """

    FLUSH_SECONDS = 0.05
    FLUSH_LINES = 1000

    def __init__(self, level: str, log_format: LogFormat, stream: TextIO | None = None) -> None:
        self._least = _LEVELS[level]
        self._stream = stream or sys.stderr
        self._render = None if log_format == "json" else _renderer(log_format)
        self._pending: list[str] = []

    def write(self, level: str, record: EventDict) -> None:
        """Writes `record` (its `event` and fields) at `level`, with the time and the request's context."""
        if _LEVELS[level] < self._least:
            return
        record["level"] = level
        stamped = _TIMESTAMP(None, level, _add_request(None, level, record))
        if self._render is None:
            self._pending.append(orjson.dumps(stamped).decode())
        else:
            self._pending.append(cast(str, self._render(None, level, stamped)))
        if len(self._pending) >= self.FLUSH_LINES:
            self.flush()
        elif len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()


class MigrationContextNoise(logging.Filter):
    """Drops the two lines Alembic writes each time it looks at the schema (each `/readyz` probe does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Context impl ", "Will assume "))


def logging_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """The standard library's configuration (`logging.config.dictConfig`; uvicorn's `log_config`)."""
    handler = {"class": "logging.StreamHandler", "formatter": "structlog", "stream": "ext://sys.stderr"}
    quiet = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer(log_format)],
                "foreign_pre_chain": [structlog.stdlib.add_logger_name, *_processors(log_format)],
            }
        },
        "filters": {"migration_context": {"()": MigrationContextNoise}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": quiet,
            "uvicorn.error": {"level": level.upper()},
            # songbook writes its own access log, with the route and the request's id.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            # With a handler of its own, SQLAlchemy's echo (SONGBOOK_SQL_ECHO) adds none of its format.
            "sqlalchemy.engine.Engine": {"handlers": ["default"], "propagate": False},
            "alembic.runtime.migration": {"filters": ["migration_context"]},
        },
    }
