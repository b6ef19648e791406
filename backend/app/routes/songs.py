"""The /songs routes: thin adapters over `app.songs`."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse

from app import exporting, idempotency, songs
from app.auth import require
from app.db import Database, SessionDep
from app.errors import InvalidParameter, problem_responses
from app.formats import Format
from app.importing import OnConflict
from app.keys import Caller
from app.models import (
    BATCH_SIZE_CEILING,
    BatchResult,
    SongCreate,
    SongPublic,
    SongQuery,
    SongUpdate,
    etag,
    public,
    public_json,
)
from app.routes import preconditions
from app.routes.links import check_page_size, preferred_count, set_next_link

router = APIRouter(prefix="/songs", tags=["songs"], responses=problem_responses(401, 403, 500, 503))

READ, WRITE = require("read"), require("write")

SongId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The song's id.")]

# The request headers the routes heed. Each is read where it is used (`preconditions`,
# `idempotency`, `links`) and documented here, not declared as a parameter: FastAPI
# parses every declared header on every request (about 25 µs of a GET, backend/README.md, "Speed").
REQUEST_HEADERS = {
    "Prefer": "`count=exact` or `count=estimated` to be told the total in `X-Total-Count`.",
    "If-None-Match": "An ETag read before: 304 if it is still so.",
    "If-Match": 'The ETag the song must still have, as read (`"3"`), or `*`: else 412 and nothing changes.',
    "Idempotency-Key": "Any unique string (a UUID): a retry with the same key and request gets the first answer "
    "again, with `Idempotent-Replayed: true`, and writes nothing more. Kept 24 hours, per API key.",
}


def reads_headers(*names: str) -> dict[str, Any]:
    """The `openapi_extra` of a route that reads the request headers `names`."""
    return {
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": REQUEST_HEADERS[name],
                "schema": {"type": "string"},
            }
            for name in names
        ]
    }


@router.get(
    "",
    dependencies=[READ],
    responses={
        200: {
            "description": "A page of the matching songs. The next page is in the `Link` header, absent on "
            "the last page; the total, when asked for with `Prefer: count=exact` (or `count=estimated`, "
            "PostgreSQL's planner estimate), in `X-Total-Count`.",
            "content": {
                "text/csv": {"schema": {"type": "string"}, "example": exporting.CSV_HEADER},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
            "headers": {
                "Link": {"description": 'The next page: `<URL>; rel="next"`.', "schema": {"type": "string"}},
                "X-Total-Count": {"description": "How many songs match.", "schema": {"type": "integer"}},
                "Preference-Applied": {"description": "The count preference honoured.", "schema": {"type": "string"}},
            },
        },
        **problem_responses(422),
    },
    openapi_extra=reads_headers("Prefer"),
)
async def list_songs(request: Request, query: Annotated[SongQuery, Query()]) -> list[SongPublic]:
    """Lists, filters, sorts and searches the songs, a page at a time.

    With `Accept: text/csv` or `application/x-ndjson`, streams every matching
    song instead (an export), in id order, without paging.
    """
    export = _export_format(request.headers.get("accept", ""))
    if export is not None:
        return await _export(request, query, export)  # type: ignore[return-value]
    check_page_size(request, query.limit)
    count = preferred_count(request)
    if query.q is None and count is None:
        page = await songs.list_page(db=request.app.state.db, query=query)
    else:
        async with request.app.state.sessionmaker() as session:
            page = await songs.list_songs(session=session, query=query, count=count)
    response = Response(public_json([public(song) for song in page.items]), media_type=JSON)
    set_next_link(request, response, page.next_cursor)
    if page.total is not None:
        response.headers["X-Total-Count"] = str(page.total)
        response.headers["Preference-Applied"] = f"count={count}"
    return response  # type: ignore[return-value]


# Routes that answer a `Response` of their own skip FastAPI's validation of what
# they return: the songs come from the database, valid, and go out as they are.
JSON = "application/json"


ETAG = {
    "ETag": {"description": "The song's version, for `If-Match` and `If-None-Match`.", "schema": {"type": "string"}}
}
REPLAYED = {"Idempotent-Replayed": {"description": "`true` on a replayed answer.", "schema": {"type": "string"}}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {
            "headers": {
                "Location": {"description": "The new song's URL.", "schema": {"type": "string"}},
                **ETAG,
                **REPLAYED,
            }
        },
        **problem_responses(400, 409, 413, 415, 422),
    },
    openapi_extra=reads_headers("Idempotency-Key"),
)
async def create_song(song_in: SongCreate, request: Request, caller: Annotated[Caller | None, WRITE]) -> SongPublic:
    """Adds a song; 409 with the existing song's id if the catalog has it already."""

    async def create(db: Database) -> Response:
        song = await songs.create_song(db=db, song_in=song_in)
        headers = {"Location": f"/songs/{song['id']}", "ETag": etag(song["version"])}
        return Response(
            public_json(public(song)), status_code=status.HTTP_201_CREATED, media_type=JSON, headers=headers
        )

    return await idempotency.run_once(request, caller, song_in.model_dump(), create)  # type: ignore[return-value]


@router.post(
    "/batch",
    responses={200: {"headers": REPLAYED}, **problem_responses(400, 409, 413, 415, 422)},
    openapi_extra=reads_headers("Idempotency-Key"),
)
async def create_songs(
    songs_in: Annotated[
        list[SongCreate],
        Body(min_length=1, max_length=BATCH_SIZE_CEILING, description="1 to 1,000 songs, unless configured otherwise."),
    ],
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller | None, WRITE],
    on_conflict: Annotated[
        OnConflict,
        Query(
            description="For a song already there (or repeated in the batch): `skip` leaves it as it is, "
            "`update` takes the batch's spelling and year, `error` refuses the batch with 409."
        ),
    ] = OnConflict.SKIP,
) -> BatchResult:
    """Adds up to 1,000 songs at once, atomically, and tells what became of each.

    If any song is invalid the batch is refused with 422, naming each one
    (`errors[].field` is `index.field`), and nothing is written.
    """
    largest = request.app.state.settings.max_batch_size
    if len(songs_in) > largest:
        raise InvalidParameter("body", "songs", f"a batch holds at most {largest} songs; this one has {len(songs_in)}")

    async def create(_: Database) -> JSONResponse:
        try:
            result = await songs.create_songs(session=session, songs_in=songs_in, on_conflict=on_conflict)
        except BaseException:
            # Ends the transaction (and SQLite's write lock) before the key is freed for a retry.
            await session.close()
            raise
        return JSONResponse(result.model_dump(mode="json"))

    payload = [song.model_dump() for song in songs_in]
    # The batch writes through its session: no hot-path connection held idle meanwhile.
    return await idempotency.run_once(request, caller, payload, create, on_one_connection=False)  # type: ignore[return-value]


@router.get(
    "/{song_id}",
    dependencies=[READ],
    responses={
        200: {"headers": ETAG},
        304: {"description": "Not modified: the song still has the ETag in `If-None-Match`.", "headers": ETAG},
        **problem_responses(404, 422),
    },
    openapi_extra=reads_headers("If-None-Match"),
)
async def get_song(song_id: SongId, request: Request) -> SongPublic:
    """Gets one song, with its ETag."""
    song = await songs.read_song(db=request.app.state.db, song_id=song_id)
    headers = {"ETag": etag(song["version"])}
    if preconditions.not_modified(request, song["version"]):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)  # type: ignore[return-value]
    return Response(public_json(public(song)), media_type=JSON, headers=headers)  # type: ignore[return-value]


WRITE_ERRORS = problem_responses(400, 404, 409, 412, 413, 415, 422, 428)
IF_MATCH = reads_headers("If-Match")


@router.patch(
    "/{song_id}", dependencies=[WRITE], responses={200: {"headers": ETAG}, **WRITE_ERRORS}, openapi_extra=IF_MATCH
)
async def update_song(
    song_id: SongId,
    changes: SongUpdate,
    request: Request,
    response: Response,
    session: SessionDep,
) -> SongPublic:
    """Changes the fields given; the others stay as they are."""
    versions = preconditions.if_match(request)
    song = await songs.update_song(session=session, song_id=song_id, changes=changes, versions=versions)
    response.headers["ETag"] = etag(song.version)
    return song  # type: ignore[return-value]


@router.put(
    "/{song_id}", dependencies=[WRITE], responses={200: {"headers": ETAG}, **WRITE_ERRORS}, openapi_extra=IF_MATCH
)
async def replace_song(
    song_id: SongId,
    song_in: SongCreate,
    request: Request,
    response: Response,
    session: SessionDep,
) -> SongPublic:
    """Replaces the song: every field, a year left out being no year."""
    versions = preconditions.if_match(request)
    song = await songs.replace_song(session=session, song_id=song_id, song_in=song_in, versions=versions)
    response.headers["ETag"] = etag(song.version)
    return song  # type: ignore[return-value]


@router.delete(
    "/{song_id}",
    dependencies=[WRITE],
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404, 412, 422, 428),
    openapi_extra=IF_MATCH,
)
async def delete_song(song_id: SongId, request: Request, session: SessionDep) -> None:
    """Removes a song."""
    await songs.delete_song(session=session, song_id=song_id, versions=preconditions.if_match(request))


EXPORT_MEDIA_TYPES = {"text/csv": Format.CSV, "application/x-ndjson": Format.NDJSON}


def _export_format(accept: str) -> Format | None:
    """The export format `accept` prefers over JSON, if any (RFC 9110 quality values)."""
    choices = []
    for position, entry in enumerate(accept.split(",")):
        media_type, *parameters = (part.strip() for part in entry.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        choices.append((-quality, position, media_type.lower()))
    for quality, _, media_type in sorted(choices):
        if quality < 0 and media_type in EXPORT_MEDIA_TYPES:
            return EXPORT_MEDIA_TYPES[media_type]
        if quality < 0 and media_type in ("application/json", "application/*", "*/*"):
            return None
    return None


async def _export(request: Request, query: SongQuery, export: Format) -> StreamingResponse:
    if paging := [name for name in ("cursor", "limit", "sort") if name in request.query_params]:
        raise InvalidParameter(
            "query", paging[0], "an export has every matching song, in id order: leave out cursor, limit and sort"
        )
    # A session of its own, open until the last row is sent: the request's closes with the route.
    session = request.app.state.sessionmaker()
    batches = songs.export_songs(session=session, query=query, file_format=export)
    try:
        first = await anext(batches, None)  # a failing database is a 503 now, before any byte is sent
    except BaseException:
        await session.close()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            batch = first
            while batch is not None:
                yield batch
                batch = await anext(batches, None)
        finally:
            await batches.aclose()
            await session.close()

    media_type = "text/csv; charset=utf-8" if export is Format.CSV else "application/x-ndjson"
    disposition = f'attachment; filename="songs.{export.value}"'
    return StreamingResponse(body(), media_type=media_type, headers={"Content-Disposition": disposition})
