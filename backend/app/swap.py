"""PostgreSQL: a large import's song table, built beside the catalog's and swapped in at its commit.

Into an empty catalog, PostgreSQL inserts a million songs in well under half
the time when it builds the secondary indexes once after the rows rather than
keeping them row by row. Dropping the catalog's own indexes would lock its
readers out until the commit, so such an import fills a copy of the table
instead (`CREATE TABLE ... (LIKE song)`, without indexes), builds the table's
indexes on it, and gives it the table's name, indexes and triggers in a few
catalog updates just before the commit. Readers read the table as it was
meanwhile; writers wait (the import holds `EXCLUSIVE`, which readers'
`ACCESS SHARE` passes). All of it is in the import's transaction: killed, it
leaves the catalog as it was, and no copy.

Only the swap takes `ACCESS EXCLUSIVE`, which readers wait for. A
transaction that read the table and is still open holds the swap back: the
import asks for the lock `SWAP_LOCK_TIMEOUT_MS` at a time, and between tries
lets through the readers that queued behind it.
"""

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

TABLE = "song"
COPY = "song_load"
SWAP_LOCK_TIMEOUT_MS = 100  # the longest a reader waits behind one try of the swap's lock
SWAP_RETRY_SECONDS = 0.1
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout

_INDEX = re.compile(r"CREATE (?P<unique>UNIQUE )?INDEX \S+ ON \S+ USING (?P<rest>.+)", re.DOTALL)

# The table's indexes, with the constraint each one is (primary key or unique), if any.
_INDEXES = """
    SELECT index.relname, pg_get_indexdef(index.oid), coalesce(con.conname, ''), coalesce(CAST(con.contype AS text), '')
    FROM pg_index AS i
    JOIN pg_class AS index ON index.oid = i.indexrelid
    LEFT JOIN pg_constraint AS con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
    WHERE i.indrelid = CAST(:table AS regclass)
    ORDER BY index.relname
"""
_TRIGGERS = """
    SELECT pg_get_triggerdef(oid) FROM pg_trigger
    WHERE tgrelid = CAST(:table AS regclass) AND NOT tgisinternal ORDER BY tgname
"""
# Every column but the generated ones, which the copy computes itself.
_STORED_COLUMNS = """
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
    WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
"""


@dataclass(frozen=True, slots=True)
class _Index:
    name: str
    on_copy: str  # its name on the copy, until the swap
    definition: str  # the statement that makes it on the copy
    constraint: str  # the primary key or unique constraint it is, if any
    kind: str  # 'p', 'u' or ''


async def allowed(connection: AsyncConnection) -> bool:
    """Whether this role may replace the song table: it owns the table, and may make tables beside it."""
    statement = (
        "SELECT pg_has_role(relowner, 'USAGE') AND has_schema_privilege(relnamespace, 'CREATE') "
        "FROM pg_class WHERE oid = CAST(:table AS regclass)"
    )
    return bool((await _query(connection, statement, table=TABLE)).scalar_one())


async def create_copy(connection: AsyncConnection) -> None:
    """Makes an empty copy of the song table: its columns, defaults, generated columns and checks, no index."""
    await connection.exec_driver_sql(f"CREATE TABLE {COPY} (LIKE {TABLE} INCLUDING ALL EXCLUDING INDEXES)")


async def copy_catalog(connection: AsyncConnection) -> int:
    """Copies the songs the catalog holds into the copy; how many."""
    columns = (await _query(connection, _STORED_COLUMNS, table=TABLE)).scalar_one()
    result = await connection.exec_driver_sql(f"INSERT INTO {COPY} ({columns}) SELECT {columns} FROM {TABLE}")  # noqa: S608 (the catalog's own names)
    return int(result.rowcount)


async def build_indexes(connection: AsyncConnection) -> None:
    """Builds each of the song table's indexes on the copy, under a name of its own until the swap."""
    for index in await _indexes(connection):
        await connection.exec_driver_sql(index.definition)
    # Statistics for the reads after the swap: the planner would take the copy for empty until autovacuum came.
    await connection.exec_driver_sql(f"ANALYZE {COPY}")


async def swap(connection: AsyncConnection) -> None:
    """Drops the song table and gives the copy its name, its sequence, its indexes' names and its triggers."""
    indexes = await _indexes(connection)
    triggers = list((await _query(connection, _TRIGGERS, table=TABLE)).scalars())
    sequence = (await _query(connection, "SELECT pg_get_serial_sequence(:table, 'id')", table=TABLE)).scalar()
    await _lock_for_swap(connection)
    if sequence is not None:  # owned by the id column, the sequence would go with the table
        await connection.exec_driver_sql(f"ALTER SEQUENCE {sequence} OWNED BY {COPY}.id")
    await connection.exec_driver_sql(f"DROP TABLE {TABLE}")
    await connection.exec_driver_sql(f"ALTER TABLE {COPY} RENAME TO {TABLE}")
    for index in indexes:
        if index.constraint:
            kind = "PRIMARY KEY" if index.kind == "p" else "UNIQUE"
            await connection.exec_driver_sql(
                f"ALTER TABLE {TABLE} ADD CONSTRAINT {index.constraint} {kind} USING INDEX {index.on_copy}"
            )
        else:
            await connection.exec_driver_sql(f"ALTER INDEX {index.on_copy} RENAME TO {index.name}")
    for trigger in triggers:
        await connection.exec_driver_sql(trigger)


async def _indexes(connection: AsyncConnection) -> list[_Index]:
    indexes = []
    found: list[tuple[str, str, str, str]] = [tuple(row) for row in await _query(connection, _INDEXES, table=TABLE)]
    for number, (name, definition, constraint, kind) in enumerate(found):
        match = _INDEX.fullmatch(definition)
        if match is None or kind not in ("", "p", "u"):  # an exclusion constraint, say: none is in the schema
            raise RuntimeError(f"the song table's index {name} cannot be built on a copy: {definition}")
        on_copy = f"{COPY}_index_{number}"
        made = f"CREATE {match['unique'] or ''}INDEX {on_copy} ON {COPY} USING {match['rest']}"
        indexes.append(_Index(name, on_copy, made, constraint, kind))
    return indexes


async def _lock_for_swap(connection: AsyncConnection) -> None:
    """Takes the song table for the swap, `SWAP_LOCK_TIMEOUT_MS` at a time, letting readers through between tries."""
    limit = (await _query(connection, "SELECT current_setting('lock_timeout')")).scalar_one()
    while True:
        try:
            async with connection.begin_nested():
                await _set_lock_timeout(connection, f"{SWAP_LOCK_TIMEOUT_MS}ms")
                await connection.exec_driver_sql(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            await asyncio.sleep(SWAP_RETRY_SECONDS)
            continue
        await _set_lock_timeout(connection, limit)
        return


async def _set_lock_timeout(connection: AsyncConnection, limit: str) -> None:
    await _query(connection, "SELECT set_config('lock_timeout', :limit, true)", limit=limit)


async def _query(connection: AsyncConnection, statement: str, **params: Any) -> CursorResult[Any]:
    return await connection.execute(text(statement), params)
