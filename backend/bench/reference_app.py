"""The reference of `make bench`: songbook's hot routes as bare ASGI over an asyncpg pool.

No framework, no ORM, no validation library, no middleware: about the most one
Python process can serve for the same work on the same machine. It mirrors the
bare-ASGI ceiling app that the speed targets are quoted against: it answers
every column of the row, as that one does; it adds the search route, and the
derived columns an insert needs in this schema.

    GET  /songs/{id}                one song, 404 when absent
    GET  /songs?limit=50&after=ID   a page in id order, with a Link to the next
    GET  /songs?q=WORD&limit=50     songs with a word starting so, in id order
    POST /songs                     {"name", "artist"} -> 201 with the song

    REFERENCE_DSN=postgresql://... REFERENCE_POOL=10 uvicorn reference_app:app
"""

import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import orjson

from app.folding import search_fold, song_key

DSN = os.environ.get("REFERENCE_DSN", "postgresql://postgres@127.0.0.1/songbook_bench")
POOL_SIZE = int(os.environ.get("REFERENCE_POOL", "10"))
FIELDS = "*"
# The statements, which bench/fastapi_app.py runs too.
SELECT_SONG = f"SELECT {FIELDS} FROM song WHERE id = $1"
SELECT_PAGE = f"SELECT {FIELDS} FROM song WHERE id > $1 ORDER BY id LIMIT $2"
# A plain prefix full-text query: every word of the query, as typed so far (no typos).
SEARCH_PAGE = (
    f"SELECT {FIELDS} FROM song WHERE search_vector @@ to_tsquery('simple', $1) AND id > $2 ORDER BY id LIMIT $3"
)
INSERT_SONG = (
    "INSERT INTO song (name, artist, name_key, artist_key, name_search, artist_search, created_at, updated_at) "
    f"VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {FIELDS}"
)
pool: Any = None


def insert_values(name: str, artist: str) -> tuple[Any, ...]:
    """The values of `INSERT_SONG`: with the derived columns a song needs in this schema."""
    return name, artist, song_key(name), song_key(artist), search_fold(name), search_fold(artist), datetime.now(UTC)


def prefix_query(q: str) -> str:
    """The tsquery of `SEARCH_PAGE` for what was typed: each word a prefix."""
    return " & ".join(f"{word}:*" for word in search_fold(q).split())


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["path"] == "/songs" and scope["method"] == "GET":
        await list_songs(scope, send)
    elif scope["path"] == "/songs" and scope["method"] == "POST":
        await create_song(receive, send)
    elif scope["path"].startswith("/songs/") and scope["method"] == "GET":
        await get_song(scope, send)
    else:
        await answer(send, 404, {"detail": "not found"})


async def lifespan(receive: Any, send: Any) -> None:
    global pool
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            pool = await asyncpg.create_pool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def get_song(scope: dict[str, Any], send: Any) -> None:
    song_id = scope["path"].removeprefix("/songs/")
    row = await pool.fetchrow(SELECT_SONG, int(song_id)) if song_id.isdigit() else None
    await answer(send, 200, dict(row)) if row else await answer(send, 404, {"detail": "not found"})


async def list_songs(scope: dict[str, Any], send: Any) -> None:
    query = parse_qs(scope["query_string"].decode())
    limit = max(1, min(int(query.get("limit", ["50"])[0]), 500))
    after = int(query.get("after", ["0"])[0])
    if "q" in query:
        rows = await pool.fetch(SEARCH_PAGE, prefix_query(query["q"][0]), after, limit)
    else:
        rows = await pool.fetch(SELECT_PAGE, after, limit)
    songs = [dict(row) for row in rows]
    links = (
        [(b"link", f'</songs?limit={limit}&after={songs[-1]["id"]}>; rel="next"'.encode())]
        if len(songs) == limit
        else []
    )
    await answer(send, 200, songs, links)


async def create_song(receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    data = orjson.loads(body)
    name, artist = data.get("name"), data.get("artist")
    if not (
        isinstance(name, str)
        and isinstance(artist, str)
        and 0 < len(name.strip()) <= 200
        and 0 < len(artist.strip()) <= 200
    ):
        await answer(send, 422, {"detail": "name and artist: 1 to 200 characters"})
        return
    row = await pool.fetchrow(INSERT_SONG, *insert_values(name.strip(), artist.strip()))
    await answer(send, 201, dict(row), [(b"location", f"/songs/{row['id']}".encode())])


async def answer(send: Any, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = orjson.dumps(body, option=orjson.OPT_UTC_Z)
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start + (headers or [])})
    await send({"type": "http.response.body", "body": payload})
