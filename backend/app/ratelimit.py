"""Rate limits: a token bucket per API key, and per client address for requests without one.

A bucket holds up to `burst` tokens and refills at `per_second`; each request
takes one, and with none left it is answered 429 with the seconds until the
next in `Retry-After`. Buckets live in the process by default, or in Redis
when `redis_url` is set, so that every instance of the service shares them.
If Redis cannot be reached, requests are let through (and logged): a limit
must not take the service down with it.
"""

import logging
import math
import time
from typing import Protocol

from fastapi import Request

from app import metrics
from app.errors import TooManyRequests

logger = logging.getLogger(__name__)


class Buckets(Protocol):
    async def take(self, name: str, per_second: float, burst: int) -> float:
        """Takes a token from bucket `name`: 0 if there was one, else the seconds until there is."""
        ...

    async def close(self) -> None: ...


class MemoryBuckets:
    """Buckets in this process: for one process, or instances that need not agree."""

    MAX_BUCKETS = 100_000

    def __init__(self) -> None:
        # name: (tokens, when, per_second, burst); oldest use first, for eviction.
        self._buckets: dict[str, tuple[float, float, float, int]] = {}

    async def take(self, name: str, per_second: float, burst: int) -> float:
        now = time.monotonic()
        tokens, then, _, _ = self._buckets.pop(name, (float(burst), now, per_second, burst))
        tokens = min(float(burst), tokens + (now - then) * per_second)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / per_second
        self._buckets[name] = (tokens - 1 if tokens >= 1 else tokens, now, per_second, burst)
        if len(self._buckets) > self.MAX_BUCKETS:
            self._evict(now)
        return wait

    def _evict(self, now: float) -> None:
        # A bucket full again is the same as no bucket: forget those; if that is not
        # enough, the least recently used half. Many clients cannot grow this without end.
        self._buckets = {
            name: bucket
            for name, bucket in self._buckets.items()
            if bucket[0] + (now - bucket[1]) * bucket[2] < bucket[3]
        }
        if len(self._buckets) > self.MAX_BUCKETS // 2:
            names = list(self._buckets)
            for name in names[: len(names) - self.MAX_BUCKETS // 2]:
                del self._buckets[name]

    async def close(self) -> None:
        return None


# Atomic in Redis, on Redis's clock: instances with skewed clocks still agree.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'when')
local tokens = tonumber(state[1]) or burst
local when = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - when) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'when', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisBuckets:
    """Buckets in Redis, shared by every instance that uses the same Redis."""

    PREFIX = "songbook:rate:"

    def __init__(self, url: str) -> None:
        # Imported here, where Redis is used: the client takes a quarter of a second of every start.
        import redis.asyncio as redis
        from redis.exceptions import RedisError

        self._redis: redis.Redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._take = self._redis.register_script(_TAKE)
        self._unreachable = (RedisError, OSError)

    async def take(self, name: str, per_second: float, burst: int) -> float:
        try:
            wait = await self._take(keys=[self.PREFIX + name], args=[per_second, burst])
        except self._unreachable as exc:
            logger.warning("rate limits not applied: Redis is unreachable (%s)", type(exc).__name__)
            return 0.0
        return float(wait)

    async def close(self) -> None:
        await self._redis.aclose()


def buckets(redis_url: str) -> Buckets:
    """In Redis if there is one to share, else in the process."""
    return RedisBuckets(redis_url) if redis_url else MemoryBuckets()


def buckets_of(request: Request) -> Buckets:
    """The process's buckets, made by the lifespan."""
    found: Buckets = request.app.state.buckets
    return found


async def limit(bucket_store: Buckets, name: str, per_second: float, burst: int) -> None:
    """Takes a token for `name`, or refuses the request with 429; a rate of 0 means no limit."""
    if per_second <= 0:
        return
    wait = await bucket_store.take(name, per_second, burst)
    if wait > 0:
        metrics.rate_limited.labels(name.partition(":")[0]).inc()
        logger.info("rate limited: %s", name.partition(":")[0])
        seconds = max(1, math.ceil(wait))
        raise TooManyRequests(
            f"Too many requests: at most {per_second:g} a second, {burst} at once. Retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )
