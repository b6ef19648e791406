"""Settings, read from the environment and an optional `.env` file."""

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Request
from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from app.errors import SettingsError
from app.logs import LogFormat
from app.models import BATCH_SIZE_CEILING, PAGE_SIZE_CEILING

ENV_PREFIX = "SONGBOOK_"

SESSION_SECRET_MIN = 32

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Everything the service can be told from outside."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        validate_by_name=True,
        validate_default=True,
    )

    database_url: Annotated[
        str,
        Field(
            validation_alias=AliasChoices("DATABASE_URL", f"{ENV_PREFIX}DATABASE_URL"),
            description="SQLAlchemy URL; empty means a SQLite file in data_dir.",
        ),
    ] = ""
    data_dir: Path = Path("data")
    pool_size: Annotated[int, Field(ge=1, le=1000)] = 10
    sql_echo: bool = False
    log_level: LogLevel = "info"
    # JSON lines for machines (the container image's default), readable lines on a terminal.
    log_format: LogFormat = "console"
    access_log: bool = True
    # GET /metrics, in the Prometheus text format.
    metrics: bool = True
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # The proxies whose X-Forwarded-For and X-Forwarded-Proto are believed: addresses, networks, or *.
    forwarded_allow_ips: str = "127.0.0.1"
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    # A file uploaded through the web page's import form.
    max_upload_bytes: Annotated[int, Field(ge=1024)] = 100 * 1024 * 1024
    max_page_size: Annotated[int, Field(ge=1, le=PAGE_SIZE_CEILING)] = 500
    max_batch_size: Annotated[int, Field(ge=1, le=BATCH_SIZE_CEILING)] = 1000
    require_if_match: bool = False
    require_read_key: bool = False
    # Off only where every client is trusted (a benchmark, a private network): writes then need no key.
    require_write_key: bool = True
    idempotency_ttl_seconds: Annotated[int, Field(ge=60, le=366 * 24 * 3600)] = 24 * 3600  # a minute to a year
    # Token buckets: per API key, and per client address for requests without one. 0 turns a limit off.
    rate_limit_per_second: Annotated[float, Field(ge=0)] = 100.0
    rate_limit_burst: Annotated[int, Field(ge=1)] = 200
    anonymous_rate_limit_per_second: Annotated[float, Field(ge=0)] = 20.0
    anonymous_rate_limit_burst: Annotated[int, Field(ge=1)] = 60
    redis_url: str = ""
    statement_timeout_ms: Annotated[int, Field(ge=0, le=2**31 - 1)] = 10_000  # PostgreSQL's largest
    # DATABASE_URL points at PgBouncer in transaction pooling mode: no named prepared statements.
    pgbouncer: bool = False
    cors_origins: str = ""
    telemetry: bool = False
    # Signs the web page's cookie. Empty: a random one kept in data_dir/session-secret. Give every
    # instance the same one when several serve the same site.
    session_secret: Annotated[str, Field(repr=False)] = ""
    # Streaming replicas of DATABASE_URL for the hot reads, comma-separated (app/replicas.py); PostgreSQL only.
    read_replica_urls: str = ""
    # A replica further behind the primary than this is left out until it catches up.
    replica_max_lag_ms: Annotated[int, Field(ge=250, le=3_600_000)] = 1000

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value:
            async_url(value)  # raises ValueError with the reason
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        # As uvicorn reads it; it takes a network it cannot read for a name that never matches.
        for item in (part.strip() for part in value.split(",")):
            if item and item != "*" and not item.startswith("unix:"):
                ipaddress.ip_network(item)  # raises ValueError: "127.0.0.1/8 has host bits set"
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        # As the Redis client reads it, checked here without importing it (it is loaded only if used).
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number from 0 to 65535)
        return value

    @field_validator("session_secret")
    @classmethod
    def _check_secret(cls, value: str) -> str:
        if value and len(value) < SESSION_SECRET_MIN:
            raise ValueError(f"must be at least {SESSION_SECRET_MIN} characters (or empty, to make one)")
        return value

    @field_validator("read_replica_urls")
    @classmethod
    def _check_replicas(cls, value: str, info: ValidationInfo) -> str:
        urls = split_urls(value)
        primary = info.data.get("database_url")  # absent if it was refused: that error says enough
        if urls and primary is not None and async_url(primary or "sqlite://").get_backend_name() != "postgresql":
            raise ValueError("read replicas need a PostgreSQL DATABASE_URL (SQLite has none)")
        for url in urls:
            if async_url(url).get_backend_name() != "postgresql":
                raise ValueError("a read replica is a PostgreSQL URL (postgresql://...)")
        return value

    @property
    def replica_urls(self) -> list[URL]:
        """The read replicas' URLs, with the async driver."""
        return [async_url(url) for url in split_urls(self.read_replica_urls)]

    @property
    def cors_origin_list(self) -> list[str]:
        """The origins browsers may call the API from: comma-separated, `*` for any."""
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def sqlalchemy_url(self) -> URL:
        """The database URL, with the async driver each backend uses here."""
        if not self.database_url:
            return make_url(f"sqlite+aiosqlite:///{self.data_dir / 'songbook.db'}")
        return async_url(self.database_url)


def async_url(raw: str) -> URL:
    """Parse a database URL; `postgres://` and `postgresql://` mean asyncpg, `sqlite://` aiosqlite.

    A PostgreSQL URL may name several servers, as libpq and asyncpg read it
    (`postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write`):
    each connection goes to the first that answers as asked.
    """
    try:
        url = make_url(_hosts_in_query(raw))
    except ArgumentError:
        raise ValueError("not a database URL (expected postgresql://... or sqlite:///...)") from None
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        attrs = url.query.get("target_session_attrs", "any")
        if attrs not in TARGET_SESSION_ATTRS:
            raise ValueError(f"target_session_attrs must be one of {', '.join(TARGET_SESSION_ATTRS)}, not {attrs!r}")
        return url.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"unsupported database {backend!r} (expected postgresql or sqlite)")


# What asyncpg's target_session_attrs accepts: which of a URL's servers a connection may take.
TARGET_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")


def _hosts_in_query(raw: str) -> str:
    """`postgresql://u@h1:p1,h2:p2/db?...` as SQLAlchemy reads several hosts: `postgresql://u@/db?...&host=h1:p1&host=h2:p2`.

    SQLAlchemy's URL has one host and port; its asyncpg dialect takes several
    from the query, each with its port.
    """
    scheme, separator, rest = raw.partition("://")
    authority, _, path = rest.partition("/")
    user, at, hosts = authority.rpartition("@")
    if not separator or "," not in hosts:
        return raw
    if "host=" in path:
        raise ValueError("name the hosts either before the database or as ?host=, not both")
    pairs = []
    for host in hosts.split(","):
        name, colon, port = host.rpartition(":")
        name, port = (name, port) if colon else (host, "5432")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{host!r} in the list of hosts is not host:port")
        pairs.append(f"host={name}:{port}")
    return f"{scheme}://{user}{at}/{path}{'&' if '?' in path else '?'}{'&'.join(pairs)}"


def split_urls(raw: str) -> list[str]:
    """A comma-separated list of URLs, blanks left out."""
    return [url.strip() for url in raw.split(",") if url.strip()]


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation error into one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(error) for error in exc.errors())) from None


def _describe(error: ErrorDetails) -> str:
    field = str(error["loc"][0]).upper() if error["loc"] else "SETTINGS"
    message = error["msg"].removeprefix("Value error, ")
    if field.endswith("DATABASE_URL"):
        # The URL may hold a password: name the variable, never echo its value.
        return f"invalid setting DATABASE_URL: {message}"
    if field.endswith("READ_REPLICA_URLS"):
        return f"invalid setting {ENV_PREFIX}READ_REPLICA_URLS: {message}"
    name = field if field.startswith(ENV_PREFIX) else ENV_PREFIX + field
    if name in (f"{ENV_PREFIX}SESSION_SECRET", f"{ENV_PREFIX}REDIS_URL"):  # a secret, or a URL with a password
        return f"invalid setting {name}: {message}"
    return f"invalid setting {name}={error['input']!r}: {message}"


async def get_settings(request: Request) -> Settings:
    """The settings the application was made with."""
    settings: Settings = request.app.state.settings
    return settings
