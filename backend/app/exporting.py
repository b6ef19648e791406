"""Exports, written by the database itself.

Each song becomes its line of CSV or NDJSON in the statement that reads it,
so that the service only passes text along: formatting a million rows in
Python costs several times more than reading them. On PostgreSQL the text
comes by COPY, which streams without a round trip per batch. The two
databases write the same bytes: timestamps as RFC 3339 in UTC with six
fraction digits, CSV fields quoted only when they hold a quote, a comma or a
line break.
"""

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from sqlalchemy import ColumnElement, Select, String, literal_column
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.formats import COLUMNS, Format

CSV_HEADER = ",".join(COLUMNS) + "\n"

_POSTGRESQL = {
    "timestamp": """to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
    "csv_text": """CASE WHEN {0} ~ '[",\\r\\n]' THEN '"' || replace({0}, '"', '""') || '"' ELSE {0} END""",
    "json_text": "to_json({0})::text",
    "integer": "{0}::text",
}
_SQLITE = {
    # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC (SQLAlchemy's format); a database default, without the fraction.
    "timestamp": "replace({0}, ' ', 'T') || CASE WHEN length({0}) = 19 THEN '.000000Z' ELSE 'Z' END",
    "csv_text": (
        """CASE WHEN instr({0}, '"') OR instr({0}, ',') OR instr({0}, char(10)) OR instr({0}, char(13)) """
        """THEN '"' || replace({0}, '"', '""') || '"' ELSE {0} END"""
    ),
    "json_text": "json_quote({0})",
    "integer": "CAST({0} AS TEXT)",
}


def columns(file_format: Format, dialect: str) -> list[ColumnElement[str]]:
    """What to select for an export: a line of text; on PostgreSQL, for CSV, the fields for COPY to quote."""
    if file_format is Format.CSV and dialect == "postgresql":
        stamps = [_POSTGRESQL["timestamp"].format(f"song.{name}") for name in ("created_at", "updated_at")]
        return [literal_column(sql, String) for sql in ("song.id", "song.name", "song.artist", "song.year", *stamps)]
    return [line(file_format, dialect)]


async def stream(
    connection: AsyncConnection, statement: Select[*tuple[Any, ...]], file_format: Format
) -> AsyncGenerator[bytes]:
    """The export's text, a chunk at a time, the CSV header in the first; by COPY on PostgreSQL, else by a cursor.

    The first chunk comes once the database has answered: a caller that waits
    for it knows the export has started well.
    """
    header = CSV_HEADER.encode() if file_format is Format.CSV else b""
    # aclosing: a reader that stops early closes every layer now, in order, not at garbage collection.
    async with aclosing(_chunks(connection, statement, file_format)) as chunks:
        async for chunk in chunks:
            yield header + chunk
            header = b""
    if header:
        yield header


async def _chunks(
    connection: AsyncConnection, statement: Select[*tuple[Any, ...]], file_format: Format
) -> AsyncGenerator[bytes]:
    compiled = statement.compile(dialect=connection.dialect)
    parameters = [compiled.params[name] for name in compiled.positiontup or ()]
    driver = (await connection.get_raw_connection()).driver_connection
    if connection.dialect.name == "postgresql":
        # NDJSON lines hold no line break, quote or delimiter of these, so COPY writes them as they are.
        options = (
            {"format": "csv"} if file_format is Format.CSV else {"format": "csv", "delimiter": "\x02", "quote": "\x01"}
        )
        # An export takes as long as the catalog is large: no statement timeout for it. But a lock it waits for
        # (a migration's) it waits for no longer than the statement timeout: then a 503, not a connection held.
        await connection.exec_driver_sql(
            "SELECT set_config('lock_timeout', current_setting('statement_timeout'), true),"
            " set_config('statement_timeout', '0', true)"
        )
        # Locked in a statement of its own: COPY takes its snapshot before it locks the table, and one that
        # waited for an import's swap (app/swap.py) would read the new table with a snapshot that cannot see
        # any of its rows. A statement after the lock takes a snapshot after it.
        await connection.exec_driver_sql("LOCK TABLE song IN ACCESS SHARE MODE")
        async with aclosing(_copy_out(connection, driver, str(compiled), parameters, options)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    try:
        cursor = await driver.execute(str(compiled), parameters)  # type: ignore[union-attr]
        try:
            while rows := await cursor.fetchmany(BATCH_ROWS):
                yield ("\n".join(text for (text,) in rows) + "\n").encode()
        finally:
            await cursor.close()
    except sqlite3.Error as exc:
        # The driver's own, under SQLAlchemy's: as the errors of every other statement are told.
        raise DBAPIError.instance(str(compiled), parameters, exc, sqlite3.Error) from exc


BATCH_ROWS = 10_000
EXPORT_TIMEOUT_SECONDS = 24 * 3600.0


async def _copy_out(
    connection: AsyncConnection, driver: Any, query: str, parameters: list[Any], options: dict[str, str]
) -> AsyncGenerator[bytes]:
    # COPY hands its output to a callback: a bounded queue turns it into a
    # stream that goes no faster than its reader.
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)

    async def copy() -> None:
        try:
            # The client's own timeout too would cut a long export short (it covers the whole COPY).
            await driver.copy_from_query(
                query, *parameters, output=chunks.put, timeout=EXPORT_TIMEOUT_SECONDS, **options
            )
        finally:
            await chunks.put(None)

    task = asyncio.create_task(copy())
    try:
        while (chunk := await chunks.get()) is not None:
            yield chunk
        await task  # its error, if it failed
    finally:
        finished = task.done() and not task.cancelled() and task.exception() is None
        if not task.done():
            # The reader left early: the connection is mid-COPY, so it is closed, not reused.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not finished:
            # Left early, or the COPY failed (its connection may have died under it, which
            # SQLAlchemy cannot tell: asyncpg ran it): closed, so that nothing rolls back on it.
            await connection.invalidate()


def line(file_format: Format, dialect: str) -> ColumnElement[str]:
    """The SQL expression that writes a row of `song` as a line of `file_format`, without its newline."""
    sql = _POSTGRESQL if dialect == "postgresql" else _SQLITE

    def field(kind: str, column: str) -> str:
        return sql[kind].format(f"song.{column}")

    stamps = [field("timestamp", "created_at"), field("timestamp", "updated_at")]
    if file_format is Format.CSV:
        parts = [
            field("integer", "id"),
            field("csv_text", "name"),
            field("csv_text", "artist"),
            f"coalesce({field('integer', 'year')}, '')",
            *stamps,
        ]
        expression = " || ',' || ".join(f"({part})" for part in parts)
    else:
        expression = (
            f"""'{{"id":' || {field("integer", "id")}"""
            f""" || ',"name":' || {field("json_text", "name")}"""
            f""" || ',"artist":' || {field("json_text", "artist")}"""
            f""" || ',"year":' || coalesce({field("integer", "year")}, 'null')"""
            f""" || ',"created_at":"' || {stamps[0]} || '","updated_at":"' || {stamps[1]} || '"}}'"""
        )
    return literal_column(expression, String)
