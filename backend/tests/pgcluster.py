"""A PostgreSQL of a test's own: initdb into a temporary folder, on a free port, as the `postgres` user.

For tests that restart, crash or cut the database: the shared one is never touched.
"""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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
        log = str(self.data.parent / "postgresql.log")
        # -l: the server writes to its log, not to pg_ctl's output, which would then never end.
        _as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", *args)

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


def _as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=120)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
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
