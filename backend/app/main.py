"""The application: lifespan, routers, error handlers and middleware, nothing else."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import db, keys, openapi, ratelimit
from app.config import Settings, load_settings
from app.errors import install_error_handlers
from app.headers import install_headers
from app.limits import BodySizeLimit
from app.routes import artists, health, songs
from app.routes import keys as key_routes


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the service for `settings` (read from the environment when not given)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What the dependencies hand out (`DatabaseDep`, `SettingsDep`, ...): made here, once.
        app.state.database = await db.open_database(settings)
        app.state.buckets = ratelimit.buckets(settings.redis_url)
        app.state.keyring = keys.Keyring()
        # What start-up made lives as long as the process: kept out of the garbage
        # collector's sight, a full collection no longer walks it on a request's time.
        gc.freeze()
        try:
            yield
        finally:
            await app.state.buckets.close()
            await app.state.database.close()

    app = FastAPI(
        title="Songbook",
        summary="A song catalog.",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry spans, metrics and logs, for the providers the
        # process configures. Off, it costs nothing; on but with none configured,
        # it still looks for them on every request (about 5% of a small read).
        telemetry=None if settings.telemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    openapi.describe(app, require_read_key=settings.require_read_key)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_headers(app, settings.cors_origin_list)  # outside the body limit: its 413 has them
    app.include_router(songs.router)
    app.include_router(artists.router)
    app.include_router(key_routes.router)
    app.include_router(health.router)
    return app
