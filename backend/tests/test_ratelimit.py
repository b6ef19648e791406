"""Rate limits: token buckets per key and per address, in the process or shared through Redis."""

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import redis.asyncio as redis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.ratelimit import MemoryBuckets, RedisBuckets
from tests.conftest import client_for, make_key


@asynccontextmanager
async def service(settings: Settings, **changes: object) -> AsyncIterator[FastAPI]:
    application = create_app(settings.model_copy(update=changes))
    async with LifespanManager(application):
        yield application


def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("Redis tests need TEST_REDIS_URL")
    return url


async def test_a_key_past_its_burst_is_429_with_retry_after(settings: Settings) -> None:
    async with service(settings, rate_limit_per_second=0.5, rate_limit_burst=3) as app:
        async with client_for(app, await make_key(app, "read")) as client:
            statuses = [(await client.get("/songs")).status_code for _ in range(3)]
            refused = await client.get("/songs")
        async with client_for(app, await make_key(app, "read")) as other:
            other_key = await other.get("/songs")

    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "too-many-requests"
    assert refused.headers["retry-after"] == "2"
    assert other_key.status_code == 200  # each key has its own bucket


async def test_requests_without_a_key_are_limited_by_address(settings: Settings) -> None:
    limits = {"anonymous_rate_limit_per_second": 1, "anonymous_rate_limit_burst": 2}
    async with service(settings, **limits) as app, client_for(app, None) as anonymous:
        statuses = [(await anonymous.get("/songs")).status_code for _ in range(3)]
        health = await anonymous.get("/healthz")

    assert statuses == [200, 200, 429]
    assert health.status_code == 200  # probes are never limited


async def test_writes_whose_body_cannot_be_read_are_refused_and_counted_before_it_is_read(settings: Settings) -> None:
    limits = {"anonymous_rate_limit_per_second": 0.1, "anonymous_rate_limit_burst": 2}
    unreadable = [b"{", '{"name": "Café"}'.encode("latin-1")]
    async with service(settings, **limits) as app, client_for(app, None) as anonymous:
        statuses = [
            (await anonymous.post(path, content=body, headers={"content-type": "application/json"})).status_code
            for path in ("/songs", "/songs/batch")
            for body in unreadable
        ]
        async with client_for(app, await make_key(app, "write")) as writer:
            with_a_key = await writer.post("/songs", content=b"{", headers={"content-type": "application/json"})

    assert statuses == [401, 401, 429, 429]
    assert with_a_key.status_code == 400


async def test_bad_keys_count_against_their_senders_address(settings: Settings) -> None:
    limits = {"anonymous_rate_limit_per_second": 0.1, "anonymous_rate_limit_burst": 2}
    async with service(settings, **limits) as app, client_for(app, "sb_00000000_guess") as guesser:
        statuses = [(await guesser.get("/songs")).status_code for _ in range(3)]

    assert statuses == [401, 401, 429]


async def test_memory_buckets_stay_bounded_and_keep_the_recent_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MemoryBuckets, "MAX_BUCKETS", 10)
    buckets = MemoryBuckets()

    for number in range(25):
        await buckets.take(f"client {number}", 0.001, 5)  # never full again in this test
    recent = await buckets.take("client 24", 0.001, 5)

    assert len(buckets._buckets) <= 10
    assert "client 24" in buckets._buckets
    assert recent == 0.0  # its bucket was kept: the second of its five tokens


async def test_a_rate_of_zero_is_no_limit(settings: Settings) -> None:
    limits = {"anonymous_rate_limit_per_second": 0, "anonymous_rate_limit_burst": 1}
    async with service(settings, **limits) as app, client_for(app, None) as anonymous:
        statuses = {(await anonymous.get("/songs")).status_code for _ in range(5)}

    assert statuses == {200}


async def test_memory_buckets_refill_at_their_rate() -> None:
    buckets = MemoryBuckets()

    first = [await buckets.take("a", 1000.0, 2) for _ in range(3)]

    assert first[:2] == [0.0, 0.0]
    assert 0 < first[2] <= 0.001


async def test_instances_share_their_buckets_through_redis(settings: Settings) -> None:
    url = redis_url()
    async with AsyncExitStack() as stack:
        limits = {"redis_url": url, "rate_limit_per_second": 0.1, "rate_limit_burst": 3}
        one = await stack.enter_async_context(service(settings, **limits))
        two = await stack.enter_async_context(service(settings, **limits))
        key = await make_key(one, "read")
        first = await stack.enter_async_context(client_for(one, key))
        second = await stack.enter_async_context(client_for(two, key))
        statuses = [
            (await first.get("/songs")).status_code,
            (await second.get("/songs")).status_code,
            (await first.get("/songs")).status_code,
            (await second.get("/songs")).status_code,
        ]

    assert statuses == [200, 200, 200, 429]


async def test_redis_buckets_empty_and_expire() -> None:
    url = redis_url()
    buckets = RedisBuckets(url)
    name = f"test-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(url)
    try:
        taken = [await buckets.take(name, 0.5, 2) for _ in range(3)]
        expires_in_ms = await client.pttl(RedisBuckets.PREFIX + name)
    finally:
        await buckets.close()
        await client.aclose()

    assert taken[:2] == [0.0, 0.0]
    assert 1.5 < taken[2] <= 2
    assert 0 < expires_in_ms <= 5000  # forgotten once it would be full again


async def test_an_unreachable_redis_lets_requests_through(settings: Settings) -> None:
    unreachable = {"redis_url": "redis://127.0.0.1:9/0", "rate_limit_burst": 1}
    async with service(settings, **unreachable) as app, client_for(app, await make_key(app, "read")) as client:
        statuses = [(await client.get("/songs")).status_code for _ in range(3)]

    assert statuses == [200, 200, 200]
