"""The application: lifespan, routers, error handlers and middleware, nothing else."""

import asyncio
import copy
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.routing import BaseRoute

from app import db, keys, logs, metrics, openapi, ratelimit, replicas, schema, web
from app.config import Settings, load_settings
from app.errors import install_error_handlers
from app.headers import install_headers
from app.limits import BodySizeLimit
from app.routes import artists, health, pages, songs
from app.routes import keys as key_routes
from app.telemetry import RequestTelemetry

VERSION = version("songbook")
DOCS_ASSETS = "/docs/assets"
POOL_SAMPLE_SECONDS = 1.0


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the service for `settings` (read from the environment when not given)."""
    settings = settings or load_settings()
    access_log = logs.AccessLog(settings.log_level, settings.log_format) if settings.access_log else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What the dependencies hand out (`ReaderDep`, `DatabaseDep`, ...): made here, once.
        app.state.database = database = await db.open_database(settings)
        app.state.buckets = ratelimit.buckets(settings.redis_url)
        app.state.keyring = keys.Keyring()
        app.state.sessions = web.Sessions(web.session_secret(settings))
        metrics.build_info.labels(VERSION, database.dialect).set(1)
        sampling = asyncio.create_task(_sample(database)) if metrics.multiprocess_dir() else None
        # What start-up made lives as long as the process: kept out of the garbage
        # collector's sight, a full collection no longer walks it on a request's time.
        gc.freeze()
        try:
            yield
        finally:
            if sampling is not None:
                sampling.cancel()
                await asyncio.gather(sampling, return_exceptions=True)
            metrics.forget_process()
            if access_log is not None:
                access_log.flush()
            await app.state.buckets.close()
            await app.state.keyring.settle()
            await database.close()

    # Swagger UI and ReDoc from files of the fastapi-offline package, served by songbook itself.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        # Swagger UI would show a badge from an online validator: the docs load nothing from outside.
        swagger_ui_parameters={"validatorUrl": None},
        title="Songbook",
        summary="A song catalog.",
        version=VERSION,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry spans, metrics and logs, for the providers the
        # process configures. Off, it costs nothing; on but with none configured,
        # it still looks for them on every request (about 5% of a small read).
        telemetry=None if settings.telemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    openapi.describe(app, require_read_key=settings.require_read_key, max_page_size=settings.max_page_size)
    # And, innermost of the middleware, the 500 of an error none of them answered.
    install_error_handlers(app, schema_behind=schema.behind)
    replicas.install(app, settings)  # with read replicas: which reads go there, and the writes' tokens
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, uploads={pages.IMPORT_PATH: settings.max_upload_bytes}
    )
    install_headers(app, settings.cors_origin_list)  # outside the body limit: its 413 has them
    # Outermost: every answer, CORS's and the body limit's included, has the request's id and is counted.
    app.add_middleware(RequestTelemetry, access_log=access_log, metrics=settings.metrics)
    _include_routes(app, settings)
    return app


def _include_routes(app: FastAPI, settings: Settings) -> None:
    """The API's routes, first, then the page's: last, for its catch-all 404 under /ui/.

    The API's routes go into the app's own router, not through `include_router`:
    FastAPI keeps an included router as a node of a tree, matched twice and walked
    on every request (fastapi#16159), about 35 µs of a `GET /songs/{id}`'s 370 µs
    of CPU (`make bench-cpu`, backend/README.md "Speed"). Each route has its
    router's prefix, tags and responses already, given when it was declared. They
    go before the documentation's, whose paths none of them shares: a request is
    matched against the routes in turn, and the API's are the ones asked for most.
    """
    routers = [songs.router, artists.router, key_routes.router, health.router]
    if settings.metrics:
        routers.append(health.metrics_router)
    app.router.routes[:0] = [route for router in routers for route in router.routes]
    pages.install(app)
    app.router.routes.extend(_head_routes(app.router.routes))


def _head_routes(routes: list[BaseRoute]) -> list[APIRoute]:
    """HEAD wherever GET is served (RFC 9110, 9.3.2): the GET's headers, without its body.

    Starlette's own routes answer HEAD with GET, FastAPI's do not; a route of both
    methods would be described twice in the OpenAPI document. Each is a copy of its
    GET route, answered by the same handler (the server sends no body after HEAD's
    headers), left out of the description, and placed last: no other request looks
    at them, and a HEAD finds the copy of the route its GET would find.
    """
    copies = []
    for route in routes:
        if isinstance(route, APIRoute) and "GET" in (route.methods or ()):
            head = copy.copy(route)
            head.methods = {"HEAD"}
            head.include_in_schema = False
            copies.append(head)
    return copies


async def _sample(database: db.Database) -> None:
    """With several workers, a scrape reads every worker's gauges as last sampled: each samples its own."""
    while True:
        metrics.sample(database.usage())
        await asyncio.sleep(POOL_SAMPLE_SECONDS)
