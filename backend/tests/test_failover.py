"""Failover of a highly available PostgreSQL (pg_auto_failover) under load: no 500, no acknowledged write lost.

The service is given both nodes in one URL, `target_session_attrs=read-write`:
each new connection goes to whichever accepts writes.
"""

import asyncio
import collections
import contextlib
import itertools
import json
import time
from collections.abc import Iterator

import pytest

from tests.formation import Formation
from tests.test_pgbouncer import running_pgbouncer
from tests.test_restarts import Load, seed, service, stored

KINDS = ("read", "page", "search", "create")
# PgBouncer before each node: one that cannot reach its server says so at once, and hands out a connection
# to it again at once when it can.
PGBOUNCER_SETTINGS = "server_login_retry = 1\nquery_wait_timeout = 10\n"


@contextlib.contextmanager
def service_url(formation: Formation, pgbouncer: bool) -> Iterator[str]:
    """The service's URL: both nodes, or a PgBouncer before each."""
    if not pgbouncer:
        yield formation.url
        return
    with contextlib.ExitStack() as stack:
        ports = [
            stack.enter_context(running_pgbouncer("127.0.0.1", port, "postgres", PGBOUNCER_SETTINGS))
            for port in formation.ports.values()
        ]
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        yield f"postgresql://postgres@{hosts}/songbook?target_session_attrs=read-write"


def window(load: Load, since: float) -> str:
    """The failures after `since`: how long from the first to the last, how many, and why."""
    failures = [failure for failure in load.failures if failure[0] >= since]
    if not failures:
        return "no failure"
    reasons = collections.Counter(f"{kind} {status} {json.loads(text)['detail']}" for _, kind, status, text in failures)
    return f"{failures[-1][0] - failures[0][0]:.1f} s from the first to the last of {len(failures)}: {dict(reasons)}"


async def recovered(load: Load, since: float, seconds: float = 60) -> None:
    """Waits until songs are created again after `since`, the service left to itself."""
    deadline = time.monotonic() + seconds
    created = len(load.created)
    while time.monotonic() < deadline:
        if len(load.created) > created + 20 and not any(failure[0] > time.monotonic() - 1 for failure in load.failures):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the service did not recover in {seconds} s: {load.answers}")


def assert_only_writes_failed(load: Load) -> None:
    """No 500; reads never failed (on any node while none took writes); writes at worst a 503."""
    assert {status for _, status in load.answers} <= {200, 201, 404, 503}, load.answers
    assert {kind for kind, status in load.answers if status == 503} <= {"create"}, load.answers


def assert_created_once(load: Load, names: collections.Counter[str]) -> None:
    # Every song answered 201 is there once; a 503 may have written its song or not, but never twice.
    assert {name: names[name] for name in load.created if names[name] != 1} == {}
    assert max(names.values()) == 1


@pytest.mark.parametrize("pgbouncer", [False, True], ids=["direct", "pgbouncer"])
async def test_the_primary_killed_is_a_window_of_503s_and_loses_no_acknowledged_write(
    formation: Formation, pgbouncer: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with service_url(formation, pgbouncer) as url:
        async with service(url, pgbouncer=pgbouncer) as client:
            await seed(client)
            load = Load(client, kinds=KINDS)
            async with load.running():
                await asyncio.sleep(1)
                old = formation.primary()
                killed = time.monotonic()
                await asyncio.to_thread(formation.kill, old)
                new = await asyncio.to_thread(
                    formation.wait_for, lambda states: formation._writable(states) not in (None, old), 60
                )
                promoted = time.monotonic() - killed
                await recovered(load, killed)

    print(f"\nhard failover: {new} promoted {promoted:.1f} s after kill -9 of {old}; {window(load, killed)}")
    assert_only_writes_failed(load)
    assert_created_once(load, await stored(formation.node_url(new)))
    # The writes that no node took: a line when that began, one when a connection is made again, not one a
    # request. (The new primary may refuse writes again for a moment, as its keeper ends the promotion.)
    outage = [record.getMessage().split(":")[0] for record in caplog.records if record.name == "app.db"]
    assert outage[0] == "database unavailable", outage
    assert all(line != following for line, following in itertools.pairwise(outage)), outage
    assert outage.count("database unavailable") <= 3, outage


@pytest.mark.parametrize("pgbouncer", [False, True], ids=["direct", "pgbouncer"])
async def test_a_planned_switchover_fails_no_read_and_loses_no_acknowledged_write(
    formation: Formation, pgbouncer: bool
) -> None:
    with service_url(formation, pgbouncer) as url:
        async with service(url, pgbouncer=pgbouncer) as client:
            await seed(client)
            load = Load(client, kinds=KINDS)
            async with load.running():
                await asyncio.sleep(1)
                old = formation.primary()
                started = time.monotonic()
                await asyncio.to_thread(formation.switchover)
                new = await asyncio.to_thread(formation.healthy)
                took = time.monotonic() - started
                await recovered(load, started)

    print(f"\nswitchover {old} -> {new} in {took:.1f} s; {window(load, started)}")
    assert new != old
    assert_only_writes_failed(load)
    assert_created_once(load, await stored(formation.node_url(new)))
