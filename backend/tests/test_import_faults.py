"""An import killed at any moment, or cut off from its database, leaves nothing behind."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from app.importing import BATCH_SIZE
from tests.catalog import rows

SONGBOOK = str(Path(sys.executable).parent / "songbook")
ROWS = 22_000  # more than one staging batch
HEADER = "name,artist,year\n"
LINES = [f"Song {i},Band {i % 97},{1950 + i % 70}\n" for i in range(ROWS)]
EXPECTED = sorted((f"Song {i}", f"Band {i % 97}", 1950 + i % 70) for i in range(ROWS))


def start_import() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SONGBOOK, "import", "--format", "csv", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )


def wait_for_line(process: subprocess.Popen[str], marker: str) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        if marker in line:
            return
    pytest.fail(f"the import ended before printing {marker!r}")


def catalog_songs(url: URL) -> list[tuple[str, str, int | None]]:
    return sorted((name, artist, year) for _, name, artist, year in rows(url))


@pytest.mark.parametrize("moment", ["while reading", "while applying"])
def test_killed_import_leaves_nothing_and_the_rerun_completes_it(catalog: URL, moment: str) -> None:
    with start_import() as process:
        assert process.stdin is not None
        process.stdin.write(HEADER + "".join(LINES[: ROWS - 1000]))
        process.stdin.flush()
        if moment == "while reading":
            # A first batch is staged; the import waits for the rest of its input.
            time.sleep(2)
        else:
            process.stdin.write("".join(LINES[ROWS - 1000 :]))
            process.stdin.close()
            wait_for_line(process, "applying")
        process.send_signal(signal.SIGKILL)
        process.wait()

    assert catalog_songs(catalog) in ([], EXPECTED)
    rerun = subprocess.run(
        [SONGBOOK, "import", "--format", "csv", "-"],
        input=HEADER + "".join(LINES),
        capture_output=True,
        text=True,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert catalog_songs(catalog) == EXPECTED


async def _cut_off_imports(url: URL) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state LIKE 'idle in%'"
                )
            )
            return len(result.all())
    finally:
        await engine.dispose()


def test_a_connection_lost_mid_import_is_a_clear_message(catalog: URL) -> None:
    if catalog.get_backend_name() != "postgresql":
        pytest.skip("a SQLite file cannot drop its connection")
    with start_import() as process:
        assert process.stdin is not None
        process.stdin.write(HEADER + "".join(LINES[: ROWS - 1000]))
        process.stdin.flush()
        deadline = time.monotonic() + 30
        while not asyncio.run(_cut_off_imports(catalog)):
            assert time.monotonic() < deadline, "the import never staged its first batch"
            time.sleep(0.2)
        _, stderr = process.communicate("".join(LINES[ROWS - 1000 :]), timeout=60)

    assert process.returncode == 1
    assert "songbook: cannot import into postgresql+asyncpg://" in stderr
    assert stderr.rstrip().endswith("nothing was imported")
    assert "Traceback" not in stderr
    assert rows(catalog) == []


def _workers(pid: int) -> list[int]:
    """The processes `pid` started to check its rows (`app.checking`)."""
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        found = [int(child) for child in children.read().split()]
    return [child for child in found if b"app.checking" in Path(f"/proc/{child}/cmdline").read_bytes()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _idle(pids: list[int]) -> None:
    """Waits until the processes have used no CPU for a while (all their input done)."""
    deadline = time.monotonic() + 30
    last = None
    while (ticks := [_cpu_ticks(pid) for pid in pids]) != last:
        assert time.monotonic() < deadline, "the import never finished the rows it was given"
        last = ticks
        time.sleep(0.5)


@pytest.mark.parametrize("moment", ["starting", "between two batches", "checking a batch"])
def test_the_row_checker_ending_is_a_clear_message(catalog: URL, moment: str) -> None:
    with start_import() as process:
        assert process.stdin is not None
        # A first batch is checked in the import's process, the next ones in its worker.
        process.stdin.write(HEADER + "".join(LINES[: ROWS - 1000]))
        process.stdin.flush()
        deadline = time.monotonic() + 30
        while not (workers := _workers(process.pid)):
            assert time.monotonic() < deadline, "the import never started its worker"
            time.sleep(0.01)
        if moment != "starting":
            _idle([process.pid, workers[0]])
        if moment == "checking a batch":
            process.stdin.write("".join(f"More {i},Band {i % 97},\n" for i in range(2 * BATCH_SIZE)))
            process.stdin.flush()
            time.sleep(0.05)  # read, sent, and being checked or sent back
        # As the kernel's OOM killer would, at any moment.
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = process.communicate("".join(LINES[ROWS - 1000 :]), timeout=60)

    assert process.returncode == 1
    assert "the process that checks the rows ended (out of memory?); nothing was imported" in stderr
    assert "Traceback" not in stderr
    assert rows(catalog) == []


def test_ctrl_c_is_one_clear_message(catalog: URL) -> None:
    # In a session of its own, so that the interrupt reaches the import's process group, as a terminal's does.
    with subprocess.Popen(
        [SONGBOOK, "import", "--format", "csv", "-"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        assert process.stdin is not None
        process.stdin.write(HEADER + "".join(LINES[: ROWS - 1000]))
        process.stdin.flush()
        deadline = time.monotonic() + 30
        while not _workers(process.pid):
            assert time.monotonic() < deadline, "the import never started its worker"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)  # and the input ends, as a pipe's does when its writer is stopped

    # The first Ctrl-C stops the import where it next waits (asyncio.run's way); one that comes while it
    # reads its input, blocked, stops it once the input ends, after the reading's last progress line (a
    # second Ctrl-C stops it at once).
    assert process.returncode == 1
    assert stderr
    *before, last = stderr.splitlines()
    assert last == "songbook: interrupted; nothing was imported"
    assert all(re.fullmatch(r"<stdin>: [\d,]+ rows read, .*", line) for line in before), before
    assert len(before) <= 1
    assert rows(catalog) == []
