"""The framework's floor in `make bench`: the reference's routes as plain FastAPI routes.

The same statements on the same asyncpg pool as `reference_app.py`, the same
orjson answers, with nothing of songbook's: no middleware, no key, no limits,
no ETag. Only what any FastAPI route pays on every request: routing, the
parameters and body validated, the response sent through Starlette. What it
reaches is what a FastAPI service can reach, here, for these routes.

    REFERENCE_DSN=postgresql://... REFERENCE_POOL=10 uvicorn fastapi_app:app
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import FastAPI, HTTPException, Query, Request, Response
from pydantic import BaseModel, StringConstraints
from reference_app import INSERT_SONG, SEARCH_PAGE, SELECT_PAGE, SELECT_SONG, insert_values, prefix_query

DSN = os.environ.get("REFERENCE_DSN", "postgresql://postgres@127.0.0.1/songbook_bench")
POOL_SIZE = int(os.environ.get("REFERENCE_POOL", "10"))

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class SongIn(BaseModel):
    name: Text
    artist: Text


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan, telemetry={"tracing": False, "metrics": False, "logs": False})


def answer(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = orjson.dumps(body, option=orjson.OPT_UTC_Z)
    return Response(content, status_code=status_code, media_type="application/json", headers=headers)


@app.get("/songs/{song_id}")
async def get_song(song_id: int, request: Request) -> Response:
    row = await request.app.state.pool.fetchrow(SELECT_SONG, song_id)
    if row is None:
        raise HTTPException(404, "not found")
    return answer(dict(row))


@app.get("/songs")
async def list_songs(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[int, Query(ge=0)] = 0,
    q: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> Response:
    pool = request.app.state.pool
    if q is not None:
        rows = await pool.fetch(SEARCH_PAGE, prefix_query(q), after, limit)
    else:
        rows = await pool.fetch(SELECT_PAGE, after, limit)
    songs = [dict(row) for row in rows]
    headers = {"Link": f'</songs?limit={limit}&after={songs[-1]["id"]}>; rel="next"'} if len(songs) == limit else None
    return answer(songs, headers=headers)


@app.post("/songs", status_code=201)
async def create_song(song_in: SongIn, request: Request) -> Response:
    row = await request.app.state.pool.fetchrow(INSERT_SONG, *insert_values(song_in.name, song_in.artist))
    return answer(dict(row), 201, {"Location": f"/songs/{row['id']}"})
