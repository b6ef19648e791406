"""The application: lifespan, routers, error handlers and middleware, nothing else."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import db, ratelimit, schema
from app.auth import document_public_reads
from app.config import Settings, load_settings
from app.errors import install_error_handlers
from app.headers import install_headers
from app.limits import BodySizeLimit
from app.routes import artists, health, keys, songs


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the service for `settings` (read from the environment when not given)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.create_engine(settings)
        app.state.engine = engine
        app.state.sessionmaker = db.create_sessionmaker(engine)
        app.state.db = db.Database(engine, await db.create_pool(settings, engine))
        app.state.schema_heads = schema.head_revisions()
        app.state.buckets = ratelimit.buckets(settings.redis_url)
        # What start-up made lives as long as the process: kept out of the garbage
        # collector's sight, a full collection no longer walks it on a request's time.
        gc.freeze()
        try:
            yield
        finally:
            await app.state.buckets.close()
            await app.state.db.close()

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
    install_error_handlers(app)
    document_public_reads(app, require_read_key=settings.require_read_key)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_headers(app, settings.cors_origin_list)  # outside the body limit: its 413 has them
    app.include_router(songs.router)
    app.include_router(artists.router)
    app.include_router(keys.router)
    app.include_router(health.router)
    return app
