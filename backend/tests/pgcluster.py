"""A PostgreSQL of a test's own: initdb into a temporary folder, on a free port, as the `postgres` user.

For tests that restart, crash or cut the database: the shared one is never touched.
`replicated` adds a streaming replica of it (`pg_basebackup -R`) on another port.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app import schema
from app.config import async_url
from tests.server import free_port

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@dataclass
class Cluster:
    data: Path
    port: int
    bin: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.data.parent / f"{self.data.name}.log")  # a replica beside it has its own
        # -l: the server writes to its log, not to pg_ctl's output, which would then never end.
        _as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", *args)

    def running(self) -> bool:
        status = ["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]
        return subprocess.run(status, capture_output=True, check=False, timeout=30).returncode == 0

    def query(self, sql: str, database: str = "postgres") -> str:
        """What psql prints for `sql`, unaligned, run by the superuser in `database`."""
        psql = str(self.bin / "psql")
        where = ("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database)
        return _as_postgres(psql, *where, "-Atc", sql)

    def restart(self, mode: str) -> None:
        self.ctl("-m", mode, "restart")

    def terminate_backends(self) -> None:
        """What a failover or a pooler's restart does to the service's connections."""
        _as_postgres(
            str(self.bin / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-Atc",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )


def _as_postgres(*command: str) -> str:
    run = subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=120)
    return run.stdout.decode()


@contextlib.contextmanager
def own_cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0 or shutil.which("runuser") is None or not BIN_DIRS:
        pytest.skip("a cluster of the test's own needs root, runuser and PostgreSQL's server binaries")
    # Not under pytest's folder: the postgres user cannot enter root's.
    folder = Path(tempfile.mkdtemp(prefix="songbook-pg-"))
    shutil.chown(folder, "postgres")
    own = Cluster(folder / "data", free_port(), BIN_DIRS[0])
    try:
        _as_postgres(str(own.bin / "initdb"), "-D", str(own.data), "-A", "trust", "-U", "postgres")
        own.ctl("start")
        try:
            yield own
        finally:
            own.ctl("-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with own_cluster() as own:
        yield own


@dataclass
class Replicated:
    """A primary and a streaming replica of it."""

    primary: Cluster
    replica: Cluster

    def start_replica(self) -> None:
        """Starts the replica if it is stopped, and has it replay (after `pg_wal_replay_pause()`)."""
        if not self.replica.running():
            self.replica.ctl("start")
        self.replica.query("SELECT pg_wal_replay_resume()")


def make_replica(primary: Cluster) -> Cluster:
    """A streaming replica of `primary`, started: a base backup with `-R` (initdb's pg_hba.conf lets
    127.0.0.1 replicate, and PostgreSQL's defaults stream: `wal_level=replica`, ten WAL senders)."""
    replica = Cluster(primary.data.parent / "replica", free_port(), primary.bin)
    _as_postgres(
        str(primary.bin / "pg_basebackup"),
        *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
        *("-D", str(replica.data), "-R", "-X", "stream", "-c", "fast"),
    )
    replica.ctl("start")
    return replica


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    """A primary of the module's own, migrated, and a streaming replica of it; each test starts them as they were."""
    with own_cluster() as primary:
        schema.upgrade(async_url(primary.url))
        replica = make_replica(primary)
        try:
            yield Replicated(primary, replica)
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                replica.ctl("-m", "immediate", "stop")
