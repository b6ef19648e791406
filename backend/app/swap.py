"""PostgreSQL: a large import's song table, built beside the catalog's and swapped in at its commit.

Into an empty catalog, PostgreSQL inserts a million songs in well under half
the time when it builds the secondary indexes once after the rows rather than
keeping them row by row. Dropping the catalog's own indexes would lock its
readers out until the commit, so such an import fills a copy of the table
instead (`CREATE TABLE ... (LIKE song)`, without indexes), builds the table's
indexes on it, and gives it the table's name, owner, privileges, indexes and
triggers in a few catalog updates just before the commit. Readers read the
table as it was meanwhile; writers wait (the import holds `EXCLUSIVE`, which
readers' `ACCESS SHARE` passes). All of it is in the import's transaction:
killed, it leaves the catalog as it was, and no copy.

Only the swap takes `ACCESS EXCLUSIVE`, which readers wait for. A
transaction that read the table and is still open holds the swap back, as
one that wrote to it holds back the import's `EXCLUSIVE`. A lock asked for
and not granted makes every later request for a lock it conflicts with wait
behind it, so the import never waits in that line for long (`lock`): it asks
`LOCK_TRY_MS` at a time, lets through the readers (or writers) that queued
behind it between tries, and gives up, writing nothing and naming the
transactions that hold the table, after `LOCK_WAIT_SECONDS` (`songbook import
--lock-wait`). An autovacuum of the table gives way: PostgreSQL cancels one
that holds a lock asked for once the request has waited `deadlock_timeout`,
so the try after one is seen holding the table waits that long, once for
each autovacuum (one that prevents wraparound is not cancelled, and is
waited for). A change the copy would not keep, made while it was filled (a
view of the table, a column's privileges: neither waits for `EXCLUSIVE`),
is found under the swap's lock (`NotKept`): the import then undoes the copy
and inserts its songs into the table itself. A GRANT takes no lock on the
table either, but it updates the table's row in `pg_class` (a column's, its
row in `pg_attribute`): the swap claims those rows with its lock, by updating
them, before it reads the privileges, so that a GRANT made after that waits
for the import's commit and then fails, where it would have been lost with
the table the swap drops; one not yet committed holds the swap back as a
reader does.
"""

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import ImportAborted

TABLE = "song"
COPY = f"{TABLE}_load"  # in the table's schema (statements that name it unqualified find it there)
SWAPPED_OUT = f"{TABLE}_swapped_out"  # the table's name from the swap's claim on it to its drop
# The longest a reader (or a writer) waits behind one try of the import's lock (`lock`), and as long again
# for each statement of the swap's claim on the table's rows in the catalog, which waits with the lock held.
LOCK_TRY_MS = 100
LOCK_RETRY_SECONDS = 0.1
LOCK_WAIT_SECONDS = 60.0  # by default, the longest the import waits for transactions that hold the table
# The modes of the locks each of the import's modes lets through: whose holders it does not wait for.
_PASSES = {"EXCLUSIVE": ["AccessShareLock"], "ACCESS EXCLUSIVE": []}
_HELD_BY = {
    "EXCLUSIVE": "a write, a session left open after one, a schema change or a vacuum",
    "ACCESS EXCLUSIVE": "an export, a session left open after a read, a write or a GRANT",
}
# Who holds the table in a mode that the import's waits for (with `rows`, or one of its rows in the
# catalog, `lock`'s claim: a transaction that updated it and is still open): server processes, or
# prepared transactions.
_HOLDERS = """
    SELECT string_agg(DISTINCT coalesce('server process ' || l.pid, 'a prepared transaction')
        || CASE WHEN a.pid IS NOT NULL AND a.usesysid IS NULL THEN ' (an autovacuum)' ELSE '' END, ', ')
    FROM pg_locks AS l LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.granted AND l.pid IS DISTINCT FROM pg_backend_pid() AND (
        l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.relation = CAST(:table AS regclass) AND l.mode <> ALL(CAST(:passes AS text[]))
        -- (An xmax may be a multixact's id, and match a transaction by chance: only this message would say so.)
        OR :rows AND l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.transactionid IN (
            SELECT xmax FROM pg_class WHERE oid = CAST(:table AS regclass)
            UNION ALL SELECT xmax FROM pg_attribute WHERE attrelid = CAST(:table AS regclass)))
"""
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout
# A catalog row's update that met another's, committed while it waited: an internal error, without a code of its own.
INTERNAL_ERROR, CONCURRENTLY_UPDATED = "XX000", "tuple concurrently updated"

_INDEX = re.compile(r"CREATE (?P<unique>UNIQUE )?INDEX \S+ ON \S+ USING (?P<rest>.+)", re.DOTALL)

# Whether the table is as the migrations make it, with nothing that a copy made with LIKE would lose
# or a drop would refuse: no replica identity but the default, row security, disabled trigger,
# publication, column privileges or statistics targets, extended statistics, constraint but
# checks, primary and unique keys (not deferrable), foreign key to it or view of it; and this role
# may do it (a member of the owner's role, allowed to create tables in its schema).
_COPYABLE = """
    SELECT c.relreplident = 'd' AND NOT c.relrowsecurity
        AND NOT EXISTS (SELECT FROM pg_trigger AS t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
                        AND t.tgenabled <> 'O')
        AND NOT EXISTS (SELECT FROM pg_publication_rel AS p WHERE p.prrelid = c.oid)
        AND NOT EXISTS (SELECT FROM pg_attribute AS a WHERE a.attrelid = c.oid AND a.attnum > 0
                        AND NOT a.attisdropped AND (a.attacl IS NOT NULL OR a.attstattarget <> -1))
        AND NOT EXISTS (SELECT FROM pg_constraint AS con WHERE con.conrelid = c.oid
                        AND (con.contype NOT IN ('p', 'u', 'c', 'n') OR con.condeferrable))
        AND NOT EXISTS (SELECT FROM pg_constraint AS con WHERE con.confrelid = c.oid)
        AND NOT EXISTS (SELECT FROM pg_statistic_ext AS x WHERE x.stxrelid = c.oid)
        AND NOT EXISTS (SELECT FROM pg_depend AS d JOIN pg_rewrite AS r ON r.oid = d.objid
                        WHERE d.refobjid = c.oid AND r.ev_class <> c.oid)
        AND pg_has_role(c.relowner, 'MEMBER') AND has_schema_privilege(c.relnamespace, 'CREATE')
    FROM pg_class AS c WHERE c.oid = CAST(:table AS regclass)
"""
# Whether the names the copy and the table swapped out take are free in the table's schema (a table's
# name is its row type's too).
_NAMES_FREE = """
    SELECT NOT EXISTS (SELECT FROM pg_class WHERE relnamespace = c.relnamespace AND relname = ANY(:names))
        AND NOT EXISTS (SELECT FROM pg_type WHERE typnamespace = c.relnamespace AND typname = ANY(:names))
    FROM pg_class AS c WHERE c.oid = CAST(:table AS regclass)
"""
# The table's schema, its copy's name there, and its owner: each quoted as an identifier.
_NAMES = """
    SELECT quote_ident(n.nspname), quote_ident(n.nspname) || '.' || quote_ident(:copy),
        quote_ident(pg_get_userbyid(c.relowner))
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.oid = CAST(:table AS regclass)
"""
# The privileges granted on the table, as GRANT statements (PUBLIC's grantee is 0).
_GRANTS = """
    SELECT 'GRANT ' || g.privilege_type || ' ON ' || :copy || ' TO '
        || CASE g.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END
        || CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
    FROM pg_class AS c, aclexplode(c.relacl) AS g
    WHERE c.oid = CAST(:table AS regclass) AND g.grantee <> c.relowner
"""
# The table's indexes, with the constraint each one is (primary key or unique), if any.
_INDEXES = """
    SELECT quote_ident(index.relname), pg_get_indexdef(index.oid),
        coalesce(quote_ident(con.conname), ''), coalesce(CAST(con.contype AS text), '')
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
# The autovacuums that hold the table, and deadlock_timeout (ms). An autovacuum has no user: its
# backend_type is shown only to roles that may read all statistics, its lack of a user to all.
_AUTOVACUUMS = """
    SELECT coalesce(array_agg(DISTINCT l.pid), '{}'),
        (SELECT CAST(setting AS integer) FROM pg_settings WHERE name = 'deadlock_timeout')
    FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND l.relation = CAST(:table AS regclass) AND l.granted AND a.usesysid IS NULL
"""
# The table's storage parameters and its TOAST table's (which LIKE does not copy), as `name = 'value'`.
_OPTIONS = """
    SELECT string_agg(prefix || split_part(o, '=', 1) || ' = ' || quote_literal(substr(o, strpos(o, '=') + 1)), ', ')
    FROM pg_class AS c
    CROSS JOIN LATERAL (VALUES ('', c.oid), ('toast.', c.reltoastrelid)) AS r (prefix, oid)
    JOIN pg_class AS t ON t.oid = r.oid
    CROSS JOIN LATERAL unnest(t.reloptions) AS o
    WHERE c.oid = CAST(:table AS regclass)
"""
# Every column, each quoted as an identifier.
_COLUMNS = """
    SELECT quote_ident(attname) FROM pg_attribute
    WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 AND NOT attisdropped ORDER BY attnum
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


@dataclass(frozen=True, slots=True)
class Plan:
    """How the song table is copied: read from the catalog once, before the copy is made."""

    schema: str
    copy: str  # schema-qualified
    owner: str
    indexes: list[_Index]


class NotKept(Exception):
    """The table was changed, while its copy was filled, in a way the copy would not keep: it cannot be swapped in."""


async def plan(connection: AsyncConnection) -> Plan | None:
    """How to copy the song table; None where it may not be replaced (this role may not, or a copy would lose
    something, `_COPYABLE`; or a table of the schema has a name the swap takes)."""
    if not (await _query(connection, _COPYABLE, table=TABLE)).scalar_one():
        return None
    if not (await _query(connection, _NAMES_FREE, table=TABLE, names=[COPY, SWAPPED_OUT])).scalar_one():
        return None
    schema, copy, owner = (str(value) for value in (await _query(connection, _NAMES, table=TABLE, copy=COPY)).one())
    found: list[tuple[str, str, str, str]] = [tuple(row) for row in await _query(connection, _INDEXES, table=TABLE)]
    indexes = []
    for number, (name, definition, constraint, kind) in enumerate(found):
        match = _INDEX.fullmatch(definition)
        if match is None or kind not in ("", "p", "u"):  # `_COPYABLE` lets no other kind through
            raise RuntimeError(f"the song table's index {name} cannot be built on a copy: {definition}")
        on_copy = f"{COPY}_index_{number}"
        made = f"CREATE {match['unique'] or ''}INDEX {on_copy} ON {copy} USING {match['rest']}"
        indexes.append(_Index(name, on_copy, made, constraint, kind))
    return Plan(schema, copy, owner, indexes)


async def create_copy(connection: AsyncConnection, plan: Plan) -> None:
    """Makes an empty copy of the song table, owned as it is: its columns, defaults, generated columns, checks
    and storage parameters, no index. It gets the table's privileges at the swap (`swap`)."""
    await connection.exec_driver_sql(
        f"CREATE TABLE {plan.copy} (LIKE {plan.schema}.{TABLE} INCLUDING ALL EXCLUDING INDEXES)"
    )
    await connection.exec_driver_sql(f"ALTER TABLE {plan.copy} OWNER TO {plan.owner}")  # the sequence's must match
    options = (await _query(connection, _OPTIONS, table=TABLE)).scalar()
    if options:  # before the rows: a fillfactor applies as they are written
        await connection.exec_driver_sql(f"ALTER TABLE {plan.copy} SET ({options})")


async def copy_catalog(connection: AsyncConnection, plan: Plan) -> None:
    """Copies the songs the catalog holds into the copy."""
    columns = (await _query(connection, _STORED_COLUMNS, table=TABLE)).scalar_one()
    await connection.exec_driver_sql(
        f"INSERT INTO {plan.copy} ({columns}) SELECT {columns} FROM {plan.schema}.{TABLE}"  # noqa: S608 (the catalog's names)
    )


async def build_indexes(connection: AsyncConnection, plan: Plan) -> None:
    """Builds each of the song table's indexes on the copy, under a name of its own until the swap."""
    for index in plan.indexes:
        await connection.exec_driver_sql(index.definition)
    # Statistics for the reads after the swap: the planner would take the copy for empty until autovacuum came.
    await connection.exec_driver_sql(f"ANALYZE {plan.copy}")


async def swap(connection: AsyncConnection, plan: Plan, wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
    """Drops the song table and gives the copy its name, its sequence, its indexes' names and its triggers.

    Waits at most `wait_seconds` for the transactions that hold the table (`lock`).
    """
    table, old = f"{plan.schema}.{TABLE}", f"{plan.schema}.{SWAPPED_OUT}"
    triggers = list((await _query(connection, _TRIGGERS, table=TABLE)).scalars())
    sequence = (await _query(connection, "SELECT pg_get_serial_sequence(:table, 'id')", table=TABLE)).scalar()
    columns = (await _query(connection, _COLUMNS, table=TABLE)).scalars()
    targets = ", ".join(f"ALTER COLUMN {name} SET STATISTICS -1" for name in columns)
    # The table and its rows in the catalog: a GRANT takes no lock on the table, but waits for the
    # transaction that updated the row it updates (pg_class's; a column's in pg_attribute) and then
    # fails. Each column's statistics target is -1 (`_COPYABLE`): changing one waits for EXCLUSIVE.
    claim = [f"ALTER TABLE {table} {targets}", f"ALTER TABLE {table} RENAME TO {SWAPPED_OUT}"]
    await lock(connection, table, "ACCESS EXCLUSIVE", wait_seconds, claim=claim)
    # What the copy would lose or the drop refuse, made while it was filled (a view of the table, a
    # column's privileges: neither waits for the import's EXCLUSIVE).
    if not (await _query(connection, _COPYABLE, table=old)).scalar_one():
        raise NotKept(
            "the song table was changed while the import ran in a way its copy would not keep (a view of it, "
            "a column's privileges...)"
        )
    # The privileges as they are now, the rows claimed: one granted while the copy was filled is kept.
    for grant in (await _query(connection, _GRANTS, table=old, copy=plan.copy)).scalars():
        await connection.exec_driver_sql(grant)
    if sequence is not None:  # owned by the id column, the sequence would go with the table
        await connection.exec_driver_sql(f"ALTER SEQUENCE {sequence} OWNED BY {plan.copy}.id")
    await connection.exec_driver_sql(f"DROP TABLE {old}")
    await connection.exec_driver_sql(f"ALTER TABLE {plan.copy} RENAME TO {TABLE}")
    for index in plan.indexes:
        if index.constraint:
            kind = "PRIMARY KEY" if index.kind == "p" else "UNIQUE"
            await connection.exec_driver_sql(
                f"ALTER TABLE {table} ADD CONSTRAINT {index.constraint} {kind} USING INDEX {index.on_copy}"
            )
        else:
            await connection.exec_driver_sql(f"ALTER INDEX {plan.schema}.{index.on_copy} RENAME TO {index.name}")
    for trigger in triggers:
        await connection.exec_driver_sql(trigger)


async def lock(
    connection: AsyncConnection,
    table: str,
    mode: str,
    wait_seconds: float = LOCK_WAIT_SECONDS,
    *,
    claim: Sequence[str] = (),
) -> None:
    """Takes the song `table` in `mode` (`EXCLUSIVE` or `ACCESS EXCLUSIVE`), `LOCK_TRY_MS` at a time, letting those
    that queue behind each try through between tries; `ImportAborted`, naming who holds it, after `wait_seconds`.

    The statements of `claim` run in each try after the lock: what they wait for (a transaction that updated
    a row of the table's in the catalog) is waited for as the lock is, the lock given up meanwhile.
    """
    limit = (await _query(connection, "SELECT current_setting('lock_timeout')")).scalar_one()
    deadline = time.monotonic() + wait_seconds
    try_ms, waited_out = LOCK_TRY_MS, set[int]()  # the autovacuums a try has waited deadlock_timeout for
    while True:
        try:
            async with connection.begin_nested():
                await _set_lock_timeout(connection, f"{try_ms}ms")
                await connection.exec_driver_sql(f"LOCK TABLE {table} IN {mode} MODE")
                for statement in claim:
                    await connection.exec_driver_sql(statement)
        except DBAPIError as exc:
            if not _held(exc):
                raise
            # PostgreSQL cancels an autovacuum that holds a lock asked for only once that request has
            # waited deadlock_timeout: the next try waits that long for an autovacuum not yet waited for
            # so (once each: one that prevents wraparound is not cancelled, and the writers queued
            # behind each long try wait as long).
            pids, deadlock_ms = tuple((await _query(connection, _AUTOVACUUMS, table=table)).one())
            try_ms = LOCK_TRY_MS + (deadlock_ms if set(pids) - waited_out else 0)
            waited_out.update(pids)
            if time.monotonic() >= deadline:
                holders = (
                    await _query(connection, _HOLDERS, table=table, passes=_PASSES[mode], rows=bool(claim))
                ).scalar()
                raise ImportAborted(
                    f"the song table was held by other transactions for over {wait_seconds:g} s "
                    f"({holders or 'now gone'}: {_HELD_BY[mode]}); --lock-wait waits longer"
                ) from None
            await asyncio.sleep(LOCK_RETRY_SECONDS)
            continue
        await _set_lock_timeout(connection, limit)
        return


def _held(error: DBAPIError) -> bool:
    """Whether `lock`'s try met a lock held, or a row of the catalog that a transaction committed during the try
    updated (waited for, or read before it committed)."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate == LOCK_NOT_AVAILABLE or (sqlstate == INTERNAL_ERROR and CONCURRENTLY_UPDATED in str(error.orig))


async def _set_lock_timeout(connection: AsyncConnection, limit: str) -> None:
    await _query(connection, "SELECT set_config('lock_timeout', :limit, true)", limit=limit)


async def _query(connection: AsyncConnection, statement: str, **params: Any) -> CursorResult[Any]:
    return await connection.execute(text(statement), params)
