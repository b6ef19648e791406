"""`songbook serve` in a process of its own, for tests of what only a real server shows: its logs, its workers."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SONGBOOK = str(Path(sys.executable).parent / "songbook")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    base: str
    log: Path  # what the server wrote to standard error
    pid: int

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def workers(self) -> list[int]:
        """The worker processes of `--workers N` (uvicorn's children), started or not."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [int(child) for child in children if _is_worker(int(child))]


@contextmanager
def serving(tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[Server]:
    """A server with `env` added to this process's environment, ready; stopped (SIGTERM) after the block."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [SONGBOOK, "serve", "--port", str(port), *args],
            env={**os.environ, **env},
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = Server(f"http://127.0.0.1:{port}", log, process.pid)
    try:
        _wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


def _is_worker(pid: int) -> bool:
    # multiprocessing's spawn starts a resource tracker beside the workers
    try:
        return "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()
    except FileNotFoundError:
        return False


def _wait_ready(server: Server, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60  # two workers starting on a busy machine take a while
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server stopped: {server.log.read_text()}")
        try:
            if httpx.get(f"{server.base}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready in 60 s: {server.log.read_text()}")
