"""A highly available PostgreSQL of a test's own: a pg_auto_failover monitor, a primary and a synchronous secondary.

Built from Debian's `postgresql-15-auto-failover` and `pg-auto-failover-cli`
(pg_auto_failover 2.0) in a temporary folder, on free ports, as the `postgres`
user; each `pg_autoctl run` (the node's keeper and its PostgreSQL) is a
process group of its own, which a test may kill whole. About 7 s from initdb
to a healthy formation on this project's machine. Skipped without
pg_autoctl, unless TEST_REQUIRE_PG_AUTO_FAILOVER is set (as CI does).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.pgcluster import BIN_DIRS
from tests.server import free_port

PG_AUTOCTL = shutil.which("pg_autoctl") or "/usr/lib/postgresql/15/bin/pg_autoctl"
DATABASE = "songbook"
# The monitor's defaults take about 51 s to fail over (a health check every 5 s with 2 retries,
# 20 s before a node is unhealthy, 30 s for the old primary to demote); these promote the secondary
# 6 to 11 s after the primary dies, on this project's machine.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",
    "pgautofailover.health_check_timeout": "1000",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",
    "pgautofailover.node_considered_unhealthy_timeout": "2000",
    "pgautofailover.primary_demote_timeout": "3000",
}
# Small, quick servers. A spread checkpoint would hold the secondary's pg_basebackup for minutes.
SERVER_SETTINGS = {"shared_buffers": "16MB", "fsync": "off", "checkpoint_completion_target": "0"}
# The monitor's states of a node that accepts writes.
WRITABLE = ("single", "wait_primary", "primary")


@dataclass
class Formation:
    folder: Path
    bin: Path
    monitor_port: int
    ports: dict[str, int]  # node name: port
    groups: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # each `pg_autoctl run`

    @property
    def url(self) -> str:
        """The service's URL: both nodes, the one that accepts writes chosen at each connection."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports.values())
        return f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs=read-write"

    def node_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[name]}/{DATABASE}"

    def states(self) -> dict[str, tuple[str, str]]:
        """Each node's state as it last reported it, and the state the monitor assigned it."""
        rows = self._monitor("SELECT nodename, reportedstate, goalstate FROM pgautofailover.node ORDER BY nodeid")
        return {name: (reported, goal) for name, reported, goal in (line.split("|") for line in rows.splitlines())}

    def primary(self) -> str:
        """The node that accepts writes, once the monitor and it agree."""
        return self.wait_for(lambda states: self._writable(states) is not None, 60)

    def wait_for(self, ready: Callable[[dict[str, tuple[str, str]]], bool], seconds: float) -> str:
        """Waits until `ready(states)`; the writable node's name then (or "")."""
        deadline = time.monotonic() + seconds
        while True:
            states = self.states()
            if ready(states):
                return self._writable(states) or ""
            if time.monotonic() > deadline:
                raise AssertionError(f"the formation did not get there in {seconds} s: {states}\n{self.logs()}")
            time.sleep(0.1)

    def healthy(self) -> str:
        """Waits for a primary and a secondary, both as the monitor assigned them; the primary's name."""
        return self.wait_for(
            lambda states: sorted(states.values()) == [("primary", "primary"), ("secondary", "secondary")], 60
        )

    def kill(self, name: str) -> None:
        """kill -9 of the node's keeper and its PostgreSQL, all at once: a machine that died."""
        process = self.groups.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def revive(self) -> None:
        """Starts again each node a test killed: it rejoins as the secondary (pg_rewind if need be)."""
        for name in self.ports:
            if name not in self.groups:
                self._start(name, "run", "--pgdata", str(self.folder / name))

    def switchover(self) -> None:
        """A planned switchover, as an operator runs it; returns when it is done."""
        self._autoctl("perform", "switchover", "--pgdata", str(self.folder / "monitor"), "--wait", "60")

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(self.folder.glob("*.log")))

    def _writable(self, states: dict[str, tuple[str, str]]) -> str | None:
        return next((name for name, (reported, goal) in states.items() if reported == goal in WRITABLE), None)

    def _monitor(self, sql: str) -> str:
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.monitor_port), "-U", "postgres"]
        return _run(*psql, "-d", "pg_auto_failover", "-Atc", sql, as_postgres=False)

    def _environment(self) -> list[str]:
        # pg_autoctl keeps its configuration and state in the XDG folders: the test's, not the user's.
        folders = {name: self.folder / name.lower() for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR")}
        return ["env", *(f"{name}={path}" for name, path in folders.items()), f"PATH={self.bin}:{os.environ['PATH']}"]

    def _autoctl(self, *args: str) -> str:
        return _run(*self._environment(), PG_AUTOCTL, *args)

    def _start(self, name: str, *args: str) -> None:
        """`pg_autoctl ...`, running until killed, in a process group of its own."""
        with (self.folder / f"{name}.log").open("ab") as log:
            self.groups[name] = subprocess.Popen(
                ["runuser", "-u", "postgres", "--", *self._environment(), PG_AUTOCTL, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _initdb(self, pgdata: Path, settings: dict[str, str]) -> None:
        _run(str(self.bin / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres")
        # Before `pg_autoctl create`, which keeps what it finds: no shared memory to spare on this machine,
        # and sockets in the test's folder, not in /var/run/postgresql.
        lines = [f"{name} = '{value}'" for name, value in (settings | {"unix_socket_directories": self.folder}).items()]
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")

    def create(self) -> None:
        monitor = self.folder / "monitor"
        self._initdb(monitor, SERVER_SETTINGS | MONITOR_SETTINGS | {"listen_addresses": "127.0.0.1"})
        common = ("--pgctl", str(self.bin / "pg_ctl"), "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl")
        self._autoctl("create", "monitor", "--pgdata", str(monitor), "--pgport", str(self.monitor_port), *common)
        # pg_autoctl starts the monitor listening on every address unless told otherwise.
        self._autoctl("config", "set", "--pgdata", str(monitor), "postgresql.listen_addresses", "127.0.0.1")
        self._start("monitor", "run", "--pgdata", str(monitor))
        monitor_url = f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover?sslmode=disable"
        for number, (name, port) in enumerate(self.ports.items()):
            pgdata = self.folder / name
            if number == 0:
                self._initdb(pgdata, SERVER_SETTINGS)  # the secondary is a base backup of it, settings included
            self._start(
                name,
                *("create", "postgres", "--pgdata", str(pgdata), "--pgport", str(port), "--name", name),
                *("--pghost", str(self.folder), "--listen", "127.0.0.1", "--dbname", DATABASE),
                *("--monitor", monitor_url, *common, "--run"),
            )
            # One at a time: the first registered is the primary.
            self.wait_for(lambda states, name=name: name in states and states[name][0] != "init", 60)  # type: ignore[misc]

    def stop(self) -> None:
        """Every process of the formation ended: SIGQUIT (PostgreSQL's immediate shutdown, which
        cleans up after itself), then SIGKILL for what is left."""
        for process in self.groups.values():
            _signal_group(process, signal.SIGQUIT)
        for process in self.groups.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            _signal_group(process, signal.SIGKILL)  # the group's others, even when its leader has gone
            process.wait(timeout=10)
        self.groups.clear()


def _signal_group(process: subprocess.Popen[bytes], signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal_number)


def _run(*command: str, as_postgres: bool = True) -> str:
    prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
    done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} {' '.join(command[1:4])}... failed: {done.stdout}{done.stderr}")
    return done.stdout.strip()


def unavailable_reason() -> str | None:
    """Why a formation cannot be made here, or None."""
    if os.geteuid() != 0 or shutil.which("runuser") is None or not BIN_DIRS:
        return "a pg_auto_failover formation needs root, runuser and PostgreSQL's server binaries"
    if not Path(PG_AUTOCTL).exists():
        return "pg_autoctl is not installed (Debian: apt-get install postgresql-15-auto-failover pg-auto-failover-cli)"
    return None


@pytest.fixture(scope="module")
def module_formation() -> Iterator[Formation]:
    """A monitor, a primary and a synchronous secondary, made once for a module's tests (about 7 s);
    every process ended and the folder gone after."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("TEST_REQUIRE_PG_AUTO_FAILOVER"):
            pytest.fail(f"{reason}, and TEST_REQUIRE_PG_AUTO_FAILOVER is set")
        pytest.skip(reason)
    # Not under pytest's folder: the postgres user cannot enter root's.
    folder = Path(tempfile.mkdtemp(prefix="songbook-ha-"))
    shutil.chown(folder, "postgres")
    own = Formation(folder, BIN_DIRS[0], free_port(), {"node1": free_port(), "node2": free_port()})
    try:
        started = time.monotonic()
        own.create()
        own.healthy()
        print(f"\nformation healthy {time.monotonic() - started:.1f} s after initdb")
        yield own
    finally:
        own.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def formation(module_formation: Formation) -> Formation:
    """The module's formation, healthy: a node an earlier test killed is back, as the secondary."""
    module_formation.revive()
    started = time.monotonic()
    module_formation.healthy()
    if time.monotonic() - started > 1:
        print(f"\nformation healthy again {time.monotonic() - started:.1f} s after the killed node was started")
    return module_formation
