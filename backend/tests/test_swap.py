"""A large import on PostgreSQL fills a copy of the song table and swaps it in: readers read on meanwhile."""

import asyncio
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from app import schema, swap
from app.config import async_url
from app.importing import BATCH_SIZE
from tests.catalog import alter, describe_song_table, query
from tests.pgcluster import Cluster

SONGBOOK = str(Path(sys.executable).parent / "songbook")
COUNT = 3 * BATCH_SIZE // 2  # over ten times the catalog: built on a copy of the table
TABLE_OID = text("SELECT CAST(CAST('song' AS regclass) AS oid)")


@pytest.fixture
def postgres(catalog: URL) -> URL:
    if catalog.get_backend_name() != "postgresql":
        pytest.skip("SQLite's import builds its indexes in the song table itself: its readers take no lock")
    return catalog


@asynccontextmanager
async def connected(url: URL) -> AsyncIterator[AsyncConnection]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


@asynccontextmanager
async def reading_role(connection: AsyncConnection) -> AsyncIterator[str]:
    """A role granted SELECT on the song table (as a reporting tool's might be), dropped after."""
    role = f"songbook_reader_{uuid.uuid4().hex[:8]}"
    await connection.execute(text(f"CREATE ROLE {role}"))
    await connection.execute(text(f"GRANT SELECT ON song TO {role}"))
    await connection.commit()
    try:
        yield role
    finally:
        await connection.rollback()
        await connection.execute(text(f"DROP OWNED BY {role}"))
        await connection.execute(text(f"DROP ROLE {role}"))
        await connection.commit()


async def start_import(tmp_path: Path, *options: str) -> asyncio.subprocess.Process:
    lines = "".join(f"Song {i},Band {i % 100}\n" for i in range(COUNT - 1))
    songs = tmp_path / "songs.csv"
    songs.write_text("name,artist\n" + lines + "Zyzzyva,Band 1\n")
    return await asyncio.create_subprocess_exec(
        SONGBOOK,
        "import",
        str(songs),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ,
    )


async def wait_for_import(watcher: AsyncConnection, doing: str, wait_event_type: str | None = None) -> None:
    """Until another session of the database is seen running a statement that starts with `doing`
    (waiting for `wait_event_type`, if given)."""
    seen = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND query LIKE :doing AND (CAST(:wait AS text) IS NULL OR wait_event_type = :wait)"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (await watcher.execute(seen, {"doing": f"{doing}%", "wait": wait_event_type})).scalar_one():
            return
        await watcher.rollback()  # pg_stat_activity is read once a transaction
        await asyncio.sleep(0.01)
    pytest.fail(f"the import was never seen running {doing!r}")


async def finished(process: asyncio.subprocess.Process) -> str:
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_readers_read_the_catalog_as_it_was_until_the_copy_is_swapped_in(
    postgres: URL, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    old = (await client.post("/songs", json={"name": "Old", "artist": "Band"})).json()["id"]
    async with connected(postgres) as holder, connected(postgres) as watcher, reading_role(watcher) as role:
        before = await describe_song_table(watcher)  # with the role's privilege
        table = (await watcher.execute(TABLE_OID)).scalar_one()
        await watcher.rollback()
        # A word of the import's, written and not committed: the import waits for it after its copy's
        # indexes are built, before the swap.
        await holder.execute(text("INSERT INTO search_term (term) VALUES ('zyzzyva')"))
        process = await start_import(tmp_path)
        await wait_for_import(watcher, "INSERT INTO search_term", wait_event_type="Lock")

        read = await client.get(f"/songs/{old}")
        listed = await client.get("/songs", params={"limit": 5})
        await holder.rollback()
        stdout = await finished(process)

        assert f"{COUNT:,} songs were added" in stdout
        assert (read.status_code, read.json()["name"]) == (200, "Old")
        assert [song["name"] for song in listed.json()] == ["Old"]
        # The app's connections read the table swapped in, with the statements they prepared before.
        assert (await client.get(f"/songs/{old}")).json()["name"] == "Old"
        found = (await client.get("/songs", params={"q": "zyzzyva"})).json()
        assert [song["name"] for song in found] == ["Zyzzyva"]
        assert await describe_song_table(watcher) == before
        privilege = text("SELECT has_table_privilege(:role, 'song', 'SELECT')")
        assert (await watcher.execute(privilege, {"role": role})).scalar_one()
        assert (await watcher.execute(TABLE_OID)).scalar_one() != table  # a copy, swapped in


async def test_a_transaction_holding_the_table_delays_the_swap_not_the_readers(
    postgres: URL, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    old = (await client.post("/songs", json={"name": "Old", "artist": "Band"})).json()["id"]
    async with connected(postgres) as holder, connected(postgres) as watcher:
        # Read, and still open: an export in progress, or a session left open.
        await holder.execute(text("SELECT count(*) FROM song"))
        process = await start_import(tmp_path)
        await wait_for_import(watcher, "LOCK TABLE public.song IN ACCESS EXCLUSIVE MODE")

        reads = [await client.get(f"/songs/{old}") for _ in range(20)]
        waiting = process.returncode is None
        await holder.rollback()
        await finished(process)

    assert [read.status_code for read in reads] == [200] * 20
    assert waiting
    assert (await client.get("/songs", params={"q": "zyzzyva"})).json()[0]["name"] == "Zyzzyva"


async def test_a_transaction_writing_to_the_table_delays_the_import_not_the_writers(
    postgres: URL, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    old = (await client.post("/songs", json={"name": "Old", "artist": "Band"})).json()["id"]
    async with connected(postgres) as holder, connected(postgres) as watcher:
        # Written to, and still open: the import's EXCLUSIVE waits for it. Asked for in one wait, it
        # would make every write after it wait too, until this transaction ended.
        await holder.execute(text("UPDATE song SET year = 1999 WHERE id = :id"), {"id": old})
        process = await start_import(tmp_path)
        await wait_for_import(watcher, "LOCK TABLE song IN EXCLUSIVE MODE", wait_event_type="Lock")

        creates = [await client.post("/songs", json={"name": f"Meanwhile {i}", "artist": "Band"}) for i in range(5)]
        waiting = process.returncode is None
        await holder.rollback()
        stdout = await finished(process)

    assert [create.status_code for create in creates] == [201] * 5
    assert waiting
    assert f"{COUNT:,} songs were added" in stdout


async def test_a_privilege_granted_while_the_copy_is_filled_is_kept(postgres: URL, tmp_path: Path) -> None:
    async with connected(postgres) as holder, connected(postgres) as watcher, reading_role(watcher) as role:
        await watcher.execute(text(f"REVOKE SELECT ON song FROM {role}"))
        await watcher.commit()
        # Held after its copy is made, before the swap (as the first test holds it).
        await holder.execute(text("INSERT INTO search_term (term) VALUES ('zyzzyva')"))
        process = await start_import(tmp_path)
        await wait_for_import(watcher, "INSERT INTO search_term", wait_event_type="Lock")
        await watcher.execute(text(f"GRANT SELECT ON song TO {role}"))  # takes no lock on the table
        await watcher.commit()
        await holder.rollback()
        await finished(process)
        privilege = text("SELECT has_table_privilege(:role, 'song', 'SELECT')")
        assert (await watcher.execute(privilege, {"role": role})).scalar_one()


@pytest.mark.parametrize(
    ("grant", "kept", "swapped"),
    [
        ("GRANT SELECT ON song TO {role}", "SELECT has_table_privilege('{role}', 'song', 'SELECT')", True),
        # A column's privilege the copy would not keep: the songs go in row by row.
        (
            "GRANT SELECT (name) ON song TO {role}",
            "SELECT has_column_privilege('{role}', 'song', 'name', 'SELECT')",
            False,
        ),
    ],
)
async def test_a_grant_not_yet_committed_at_the_swap_holds_it_back_and_is_kept(
    postgres: URL, client: httpx.AsyncClient, tmp_path: Path, grant: str, kept: str, swapped: bool
) -> None:
    old = (await client.post("/songs", json={"name": "Old", "artist": "Band"})).json()["id"]
    async with (
        connected(postgres) as granter,
        connected(postgres) as holder,
        connected(postgres) as watcher,
        reading_role(watcher) as role,
    ):
        await watcher.execute(text(f"REVOKE SELECT ON song FROM {role}"))
        await watcher.commit()
        table = (await watcher.execute(TABLE_OID)).scalar_one()
        await watcher.rollback()
        await holder.execute(text("INSERT INTO search_term (term) VALUES ('zyzzyva')"))
        process = await start_import(tmp_path)
        await wait_for_import(watcher, "INSERT INTO search_term", wait_event_type="Lock")
        await granter.execute(text(grant.format(role=role)))  # takes no lock on the table; not yet committed
        await holder.rollback()
        # The swap's claim on the table's rows in the catalog waits for the GRANT's transaction.
        await wait_for_import(watcher, "ALTER TABLE public.song ", wait_event_type="Lock")

        reads = [await client.get(f"/songs/{old}") for _ in range(10)]
        waiting = process.returncode is None
        await granter.commit()
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
        granted = (await watcher.execute(text(kept.format(role=role)))).scalar_one()
        count = (await watcher.execute(text("SELECT count(*) FROM song"))).scalar_one()
        replaced = (await watcher.execute(TABLE_OID)).scalar_one() != table

    assert process.returncode == 0, stderr.decode()
    assert [read.status_code for read in reads] == [200] * 10  # between the swap's tries
    assert waiting
    assert granted
    assert (count, replaced) == (COUNT + 1, swapped)
    assert f"{COUNT:,} songs were added" in stdout.decode()


def _grant_now(url: URL, statement: str) -> bool:
    """Sends `statement` (a GRANT) on a connection of its own, waiting at most 100 ms for a lock: whether it
    committed (False: it waited for a transaction that updated a row it updates)."""

    async def grant() -> bool:
        connection = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
        try:
            await connection.execute("SET lock_timeout = '100ms'")
            await connection.execute(statement)
        except asyncpg.LockNotAvailableError:
            return False
        finally:
            await connection.close()
        return True

    with ThreadPoolExecutor(1) as thread:  # the swap's connection waits for it: its own event loop
        return thread.submit(asyncio.run, grant()).result(timeout=60)


@pytest.mark.parametrize(
    ("grant", "revoke", "kept", "column"),
    [
        (
            "GRANT SELECT ON song TO {role}",
            "REVOKE SELECT ON song FROM {role}",
            "SELECT has_table_privilege('{role}', 'song', 'SELECT')",
            False,
        ),
        (
            "GRANT SELECT (name) ON song TO {role}",
            "REVOKE SELECT (name) ON song FROM {role}",
            "SELECT has_column_privilege('{role}', 'song', 'name', 'SELECT')",
            True,
        ),
    ],
)
async def test_a_grant_sent_at_any_step_of_the_swap_is_kept_or_fails(
    postgres: URL, tmp_path: Path, grant: str, revoke: str, kept: str, column: bool
) -> None:
    """For each statement the swap runs, in turn: a GRANT sent just after it commits and is kept (or, a
    column's, turns the swap down: `NotKept`), or waits for the import's transaction; it is never lost."""
    outcomes: list[tuple[int, bool, bool, bool]] = []  # the statement, granted, swapped in, the privilege after
    async with connected(postgres) as connection, reading_role(connection) as role:
        await connection.execute(text(revoke.format(role=role)))
        await connection.commit()
        for step in itertools.count(1):
            run, granted = 0, False

            def after_statement(*_: object, step: int = step) -> None:
                nonlocal run, granted
                run += 1
                if run == step:
                    granted = _grant_now(postgres, grant.format(role=role))

            plan = await swap.plan(connection)
            assert plan is not None
            await swap.create_copy(connection, plan)
            await swap.build_indexes(connection, plan)
            event.listen(connection.sync_connection, "after_cursor_execute", after_statement)
            try:
                await swap.swap(connection, plan)
                swapped = True
            except swap.NotKept:
                swapped = False
            finally:
                event.remove(connection.sync_connection, "after_cursor_execute", after_statement)
            if swapped:
                await connection.commit()
            else:
                await connection.rollback()
            privilege = (await connection.execute(text(kept.format(role=role)))).scalar_one()
            await connection.execute(text(revoke.format(role=role)))
            await connection.commit()
            if step > run:
                break
            outcomes.append((step, granted, swapped, privilege))

    assert len(outcomes) > 10
    assert {granted for _, granted, _, _ in outcomes} == {True, False}  # before the swap's claim, and after it
    if column:  # the copy would not keep a column's privilege: the swap is turned down, and the table kept
        assert [step for step, granted, swapped, _ in outcomes if granted and swapped] == []
    assert [step for step, granted, _, privilege in outcomes if granted and not privilege] == []


async def test_a_table_with_a_dropped_column_is_copied(postgres: URL, tmp_path: Path) -> None:
    # A column added and dropped again (a migration and its downgrade): the catalog keeps it, dropped, with
    # a statistics target of 0 on PostgreSQL 15 and 16.
    dropped = text("SELECT count(*) FROM pg_attribute WHERE attrelid = CAST('song' AS regclass) AND attisdropped")
    async with connected(postgres) as watcher:
        await watcher.execute(text("ALTER TABLE song ADD COLUMN gone integer"))
        await watcher.execute(text("ALTER TABLE song DROP COLUMN gone"))
        await watcher.commit()
        table, before = (await watcher.execute(TABLE_OID)).scalar_one(), (await watcher.execute(dropped)).scalar_one()
        await watcher.rollback()
        await finished(await start_import(tmp_path))
        swapped = (await watcher.execute(TABLE_OID)).scalar_one() != table
        after = (await watcher.execute(dropped)).scalar_one()

    assert before == 1
    assert swapped  # a copy, swapped in
    assert after == 0


async def test_the_tables_storage_parameters_are_kept(postgres: URL, tmp_path: Path) -> None:
    options = "fillfactor = 90, autovacuum_vacuum_scale_factor = 0.05, toast.autovacuum_enabled = false"
    read = text(
        "SELECT c.reloptions, t.reloptions, CAST(c.oid AS int) FROM pg_class AS c "
        "JOIN pg_class AS t ON t.oid = c.reltoastrelid WHERE c.oid = CAST('song' AS regclass)"
    )
    async with connected(postgres) as watcher:
        await watcher.execute(text(f"ALTER TABLE song SET ({options})"))
        await watcher.commit()
        try:
            before = (await watcher.execute(read)).one()
            await watcher.rollback()
            await finished(await start_import(tmp_path))
            after = (await watcher.execute(read)).one()
        finally:
            await watcher.rollback()
            await watcher.execute(
                text("ALTER TABLE song RESET (fillfactor, autovacuum_vacuum_scale_factor, toast.autovacuum_enabled)")
            )
            await watcher.commit()

    assert (
        after[:2]
        == before[:2]
        == (
            ["fillfactor=90", "autovacuum_vacuum_scale_factor=0.05"],
            ["autovacuum_enabled=false"],
        )
    )
    assert after[2] != before[2]  # a copy, swapped in


# For the song table, an autovacuum for any dead row that takes a minute or more over the test's catalog:
# a page, then a tenth of a second asleep.
SLOW_AUTOVACUUM = (
    "autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0, "
    "autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1"
)


async def test_an_autovacuum_of_the_table_gives_way_to_the_import(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # As a role of its own, not a superuser: an autovacuum's backend_type is hidden from such a role.
    cluster.query("ALTER SYSTEM SET autovacuum_naptime = '1s'")
    cluster.query("SELECT pg_reload_conf()")
    cluster.query("CREATE ROLE songbook LOGIN")
    cluster.query("CREATE DATABASE songbook OWNER songbook")
    url = f"postgresql://songbook@127.0.0.1:{cluster.port}/songbook"
    await asyncio.to_thread(schema.upgrade, async_url(url))
    monkeypatch.setenv("DATABASE_URL", url)
    seed = await asyncio.create_subprocess_exec(SONGBOOK, "seed", "--count", str(COUNT), env=os.environ)
    assert await asyncio.wait_for(seed.wait(), 120) == 0
    cluster.query(f"ALTER TABLE song SET ({SLOW_AUTOVACUUM})", "songbook")
    cluster.query("DELETE FROM song WHERE id % 2 = 0", "songbook")  # dead rows: the autovacuum comes for them
    vacuuming = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'autovacuum: VACUUM%public.song'"
    deadline = time.monotonic() + 60
    while cluster.query(vacuuming).strip() != "1":
        assert time.monotonic() < deadline, "no autovacuum of the song table came"
        await asyncio.sleep(0.1)
    log = cluster.data.parent / f"{cluster.data.name}.log"
    logged = log.stat().st_size

    stdout = await finished(await start_import(tmp_path, "--lock-wait", "15"))

    assert f"{COUNT:,} songs were added" in stdout
    with log.open() as lines:  # what the server logged while the import ran
        lines.seek(logged)
        assert "canceling autovacuum task" in lines.read()


@pytest.mark.parametrize(
    ("change", "kept", "undo"),
    [
        (
            "GRANT SELECT (name) ON song TO {role}",
            "SELECT has_column_privilege('{role}', 'song', 'name', 'SELECT')",
            "REVOKE SELECT (name) ON song FROM {role}",
        ),
        (
            "CREATE VIEW song_names AS SELECT name FROM song",
            "SELECT count(*) = {count} FROM song_names",
            "DROP VIEW song_names",
        ),
    ],
)
async def test_a_change_the_copy_would_not_keep_made_while_it_is_filled_sends_the_songs_in_row_by_row(
    postgres: URL, client: httpx.AsyncClient, tmp_path: Path, change: str, kept: str, undo: str
) -> None:
    async with connected(postgres) as holder, connected(postgres) as watcher, reading_role(watcher) as role:
        before = await describe_song_table(watcher)
        table = (await watcher.execute(TABLE_OID)).scalar_one()
        await watcher.rollback()
        await holder.execute(text("INSERT INTO search_term (term) VALUES ('zyzzyva')"))
        process = await start_import(tmp_path)
        await wait_for_import(watcher, "INSERT INTO search_term", wait_event_type="Lock")
        await watcher.execute(text(change.format(role=role)))  # neither waits for the import's EXCLUSIVE
        await watcher.commit()
        # A song of the import's, created meanwhile: it waits for the import's EXCLUSIVE, which the copy's
        # undoing keeps, until the commit (were it written between the two, the import's insert would fail).
        create = asyncio.create_task(client.post("/songs", json={"name": "Zyzzyva", "artist": "Band 1"}))
        await wait_for_import(watcher, "INSERT INTO song ", wait_event_type="Lock")
        await holder.rollback()
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
            created = await asyncio.wait_for(create, 30)
            songs = (await watcher.execute(text("SELECT count(*), to_regclass('song_load') IS NULL FROM song"))).one()
            change_kept = (await watcher.execute(text(kept.format(role=role, count=COUNT)))).scalar_one()
            after = await describe_song_table(watcher)
            same_table = (await watcher.execute(TABLE_OID)).scalar_one() == table
            words = (await watcher.execute(text("SELECT count(*) FROM search_term WHERE term = 'zyzzyva'"))).scalar()
        finally:
            await watcher.rollback()
            await watcher.execute(text(undo.format(role=role)))
            await watcher.commit()

    assert process.returncode == 0, stderr.decode()
    warning = "songbook: warning: the song table was changed while the import ran in a way its copy would not keep"
    assert warning in stderr.decode()
    assert f"{COUNT:,} songs were added" in stdout.decode()
    assert tuple(songs) == (COUNT, True)  # every song, in the table itself; the copy gone
    assert (created.status_code, created.json()["code"]) == (409, "duplicate-song")  # the import's, written first
    assert change_kept
    assert same_table  # not a copy swapped in: the songs went into the table itself
    assert after == before  # its columns, indexes, constraints and triggers
    assert words == 1


async def test_an_index_made_while_the_import_waits_for_the_table_is_kept(
    postgres: URL, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    old = (await client.post("/songs", json={"name": "Old", "artist": "Band"})).json()["id"]
    async with connected(postgres) as holder, connected(postgres) as watcher:
        table = (await watcher.execute(TABLE_OID)).scalar_one()
        await watcher.rollback()
        await holder.execute(text("UPDATE song SET year = 1999 WHERE id = :id"), {"id": old})
        process = await start_import(tmp_path)
        # The import has read how to copy the table, and waits for it: the index comes after.
        await wait_for_import(watcher, "LOCK TABLE song IN EXCLUSIVE MODE", wait_event_type="Lock")
        await holder.execute(text("CREATE INDEX ix_song_made_meanwhile ON song (year)"))
        await holder.commit()
        try:
            await finished(process)
            made = text("SELECT to_regclass('ix_song_made_meanwhile') IS NOT NULL, count(*) FROM song")
            kept, count = (await watcher.execute(made)).one()
            swapped = (await watcher.execute(TABLE_OID)).scalar_one() != table
        finally:  # the catalog's schema is the migrations' for the tests after
            await watcher.rollback()
            await watcher.execute(text("DROP INDEX IF EXISTS ix_song_made_meanwhile"))
            await watcher.commit()

    assert kept
    assert (count, swapped) == (COUNT + 1, True)  # all the songs, in a copy swapped in


@pytest.mark.parametrize(
    ("held", "statement"),
    [
        ("a write", "UPDATE song SET year = 1999 WHERE id = :id"),  # before the copy: EXCLUSIVE
        ("an export", "SELECT count(*) FROM song WHERE id = :id"),  # at the swap: ACCESS EXCLUSIVE
        # At the swap's claim on the table's row in the catalog, which the GRANT updated.
        ("an export, a session left open after a read, a write or a GRANT", "GRANT SELECT ON song TO PUBLIC"),
    ],
)
async def test_an_import_held_back_past_its_lock_wait_stops_and_names_who_holds_the_table(
    postgres: URL, client: httpx.AsyncClient, tmp_path: Path, held: str, statement: str
) -> None:
    old = (await client.post("/songs", json={"name": "Old", "artist": "Band"})).json()["id"]
    async with connected(postgres) as holder, connected(postgres) as watcher:
        pid = (await holder.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await holder.execute(text(statement), {"id": old})
        started = time.monotonic()
        process = await start_import(tmp_path, "--lock-wait", "1")
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
        took = time.monotonic() - started
        await holder.rollback()
        left = (await watcher.execute(text("SELECT count(*), to_regclass('song_load') IS NULL FROM song"))).one()

    assert process.returncode == 1
    message = stderr.decode()
    assert f"the song table was held by other transactions for over 1 s (server process {pid}: {held}" in message
    assert "nothing was imported" in message
    assert tuple(left) == (1, True)  # the catalog as it was, and no copy
    assert took < 60


def test_a_role_that_does_not_own_the_table_keeps_its_indexes_row_by_row(postgres: URL, tmp_path: Path) -> None:
    # A deployment whose service role may write the catalog but did not make it (the migrations' role did).
    role = f"songbook_writer_{uuid.uuid4().hex[:8]}"
    grants = [
        f"CREATE ROLE {role} LOGIN",
        f"GRANT SELECT, INSERT, UPDATE ON song, search_term, alembic_version TO {role}",
        f"GRANT USAGE, SELECT, UPDATE ON SEQUENCE song_id_seq TO {role}",
    ]
    for statement in grants:
        alter(postgres, statement)
    table = query(postgres, "SELECT CAST(CAST('song' AS regclass) AS oid)")
    try:
        songs = tmp_path / "songs.csv"
        songs.write_text("name,artist\n" + "".join(f"Song {i},Band {i % 100}\n" for i in range(COUNT)))
        env = os.environ | {"DATABASE_URL": postgres.set(username=role).render_as_string(hide_password=False)}
        result = subprocess.run([SONGBOOK, "import", str(songs)], env=env, capture_output=True, text=True, check=False)
    finally:
        for statement in (f"DROP OWNED BY {role}", f"DROP ROLE {role}"):
            alter(postgres, statement)

    assert result.returncode == 0, result.stderr
    assert f"{COUNT:,} songs were added" in result.stdout
    assert query(postgres, "SELECT CAST(CAST('song' AS regclass) AS oid)") == table  # the same table, not a copy


@pytest.mark.parametrize("taken", [swap.COPY, swap.SWAPPED_OUT])
def test_a_name_the_swap_takes_already_taken_keeps_the_indexes_row_by_row(
    postgres: URL, tmp_path: Path, taken: str
) -> None:
    alter(postgres, f"CREATE TABLE {taken} (note text)")  # an operator's, say
    table = query(postgres, "SELECT CAST(CAST('song' AS regclass) AS oid)")
    try:
        songs = tmp_path / "songs.csv"
        songs.write_text("name,artist\n" + "".join(f"Song {i},Band {i % 100}\n" for i in range(COUNT)))
        result = subprocess.run([SONGBOOK, "import", str(songs)], capture_output=True, text=True, check=False)
        left = query(postgres, f"SELECT count(*) FROM {taken}")
    finally:
        alter(postgres, f"DROP TABLE {taken}")

    assert result.returncode == 0, result.stderr
    assert f"{COUNT:,} songs were added" in result.stdout
    assert query(postgres, "SELECT CAST(CAST('song' AS regclass) AS oid)") == table  # the same table, not a copy
    assert left == [(0,)]


def test_the_table_is_copied_for_a_load_as_large_as_the_catalog_that_adds_half_as_many_songs(
    postgres: URL, tmp_path: Path
) -> None:
    def load(count: int, first: int) -> None:
        songs = tmp_path / "songs.csv"
        songs.write_text("name,artist\n" + "".join(f"Song {i},Band {i % 100}\n" for i in range(first, first + count)))
        result = subprocess.run([SONGBOOK, "import", str(songs)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr

    def table() -> list[tuple[int]]:
        return query(postgres, "SELECT CAST(CAST('song' AS regclass) AS oid)")

    load(BATCH_SIZE + 1, first=0)
    catalog = table()
    load(BATCH_SIZE, first=BATCH_SIZE + 1)  # fewer songs than the catalog holds: indexes kept row by row
    kept = table()
    load(2 * BATCH_SIZE + 1, first=2 * BATCH_SIZE + 1)  # as many as it holds: a copy, swapped in

    swapped = table()
    load(4 * BATCH_SIZE + 2, first=0)  # every song again: as many rows as the catalog, none added, nothing copied
    unchanged = table()
    # As many rows as the catalog holds, the first of them its last songs: `first` new ones.
    held = 4 * BATCH_SIZE + 2
    load(held, first=held // 2 - 1)  # fewer new songs than half the catalog: kept row by row
    mostly_known = table()
    held += held // 2 - 1
    load(held, first=(held + 1) // 2)  # half of it new: copied
    half_new = table()

    assert kept == catalog
    assert swapped != catalog
    assert unchanged == swapped
    assert mostly_known == swapped
    assert half_new != swapped
    assert len(query(postgres, "SELECT id FROM song")) == held + (held + 1) // 2


async def test_an_export_that_waits_for_the_swap_reads_the_table_swapped_in(postgres: URL, tmp_path: Path) -> None:
    async with connected(postgres) as importer, connected(postgres) as watcher:
        # What an import does, by hand, up to its commit: the catalog's song and a new one in the copy.
        await importer.execute(
            text(
                "INSERT INTO song (name, artist, name_key, artist_key, name_search, "
                "artist_search) VALUES ('Old', 'Band', 'old', 'band', 'old', 'band')"
            )
        )
        await importer.commit()
        await importer.execute(text("LOCK TABLE song IN EXCLUSIVE MODE"))
        plan = await swap.plan(importer)
        assert plan is not None
        await swap.create_copy(importer, plan)
        await swap.copy_catalog(importer, plan)
        await importer.execute(
            text(
                f"INSERT INTO {swap.COPY} (name, artist, name_key, artist_key, name_search, "
                "artist_search) VALUES ('New', 'Band', 'new', 'band', 'new', 'band')"
            )
        )
        await swap.build_indexes(importer, plan)
        await swap.swap(importer, plan)
        output = tmp_path / "songs.csv"
        export = await asyncio.create_subprocess_exec(
            SONGBOOK, "export", "--output", str(output), stderr=asyncio.subprocess.PIPE, env=os.environ
        )
        await wait_for_import(watcher, "", wait_event_type="Lock")  # the export, waiting for the swap
        await importer.commit()
        _, stderr = await asyncio.wait_for(export.communicate(), 60)

    assert export.returncode == 0, stderr.decode()
    assert sorted(line.split(",")[1] for line in output.read_text().splitlines()[1:]) == ["New", "Old"]
