"""The /songs routes: thin adapters over `app.songs`.

The routes that answer songs write them with `responses` (orjson, from the
rows) and return that `Response`: FastAPI then skips validating what they
return. `response_model` keeps their description in the OpenAPI document.
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.convertors import Convertor, register_url_convertor

from app import exporting, idempotency, preconditions, songs
from app.auth import KeyFirstRoute, ReaderDep, WriterDep
from app.db import Database
from app.errors import InvalidParameter
from app.formats import Format
from app.importing import OnConflict
from app.models import BATCH_SIZE_CEILING, BatchResult, Song, SongCreate, SongPublic, SongQuery, SongRow, SongUpdate
from app.openapi import READ_AFTER_HEADER, problem_responses, reads_headers, reads_query
from app.routes.links import check_page_size, preferred_count, read_query, set_next_link
from app.routes.responses import song_response, songs_response

router = APIRouter(
    prefix="/songs", tags=["songs"], responses=problem_responses(401, 403, 500, 503), route_class=KeyFirstRoute
)

# The listing's answer depends on these request headers: an export or a page, with its count or not (RFC 9110).
LISTING_VARIES = "Accept, Prefer"
SONG_TABLE = Song.__table__  # type: ignore[attr-defined]


def _as_written(segment: object) -> object:
    """An id only as the service writes it: pydantic's lax int takes `1_0` as 10, and `+1`, `01` and `1.0` as 1,
    so that many URLs would name one song, each cached apart."""
    written = isinstance(segment, str) and segment.isascii() and segment.isdigit()
    if isinstance(segment, str) and not (written and (segment[0] != "0" or segment == "0")):  # 0: too small, as such
        raise PydanticCustomError("int_parsing", "Input should be a song's id: digits, without a leading zero")
    return segment


# The validator after Path: before it, the OpenAPI document would give the bounds as `ge` and `le`, not JSON Schema's.
SongId = Annotated[int, Path(ge=1, le=songs.ID_MAX, description="The song's id."), BeforeValidator(_as_written)]


class _SongIdSegment(Convertor[str]):
    """The path segment of a song's id: any but `batch`, which names the batch route.

    So `PUT /songs/batch` is a 405 that allows POST, not a song id that is not a
    number (422); FastAPI still checks the segment as a `SongId`.
    """

    regex = "(?!batch$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("song_id", _SongIdSegment())
ONE_SONG = "/{song_id:song_id}"

ETAG = {
    "ETag": {"description": "The song's version, for `If-Match` and `If-None-Match`.", "schema": {"type": "string"}}
}
REPLAYED = {"Idempotent-Replayed": {"description": "`true` on a replayed answer.", "schema": {"type": "string"}}}
WRITTEN = {**ETAG, **READ_AFTER_HEADER}


@router.get(
    "",
    response_model=list[SongPublic],
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
    openapi_extra=reads_query(SongQuery, "Prefer", "Songbook-Read-After"),
)
async def list_songs(request: Request, access: ReaderDep) -> Response:
    """Lists, filters, sorts and searches the songs, a page at a time.

    With `Accept: text/csv` or `application/x-ndjson`, streams every matching
    song instead (an export), in id order, without paging.
    """
    query = read_query(request, SongQuery)
    export = _export_format(request.headers.get("accept", ""))
    if export is not None:
        streamed = await export_response(request, access.db, query, export)
        streamed.headers["Vary"] = LISTING_VARIES
        return streamed
    await check_page_size(request, query)
    count = preferred_count(request)
    page = await songs.list_songs(db=access.db, query=query, count=count)
    response = songs_response(page.items)
    response.headers["Vary"] = LISTING_VARIES
    set_next_link(request, response, page.next_cursor)
    if page.total is not None:
        response.headers["X-Total-Count"] = str(page.total)
        response.headers["Preference-Applied"] = f"count={count}"
    return response


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SongPublic,
    responses={
        201: {
            "headers": {
                "Location": {"description": "The new song's URL.", "schema": {"type": "string"}},
                **WRITTEN,
                **REPLAYED,
            }
        },
        **problem_responses(400, 409, 413, 415, 422),
    },
    openapi_extra=reads_headers("Idempotency-Key"),
)
async def create_song(song_in: SongCreate, request: Request, access: WriterDep) -> Response:
    """Adds a song; 409 with the existing song's id if the catalog has it already."""

    def created(song: SongRow) -> Response:
        return song_response(song, status_code=status.HTTP_201_CREATED, headers={"Location": f"/songs/{song['id']}"})

    async def create() -> Response:
        return created(await songs.create_song(db=access.db, song_in=song_in))

    async def foresee() -> idempotency.Foreseen | None:
        # Its id set aside, a new song's answer is known before it is written: kept with it, at once.
        row = await songs.new_song(db=access.db, song_in=song_in)
        if row is None:
            return None
        return idempotency.Foreseen(SONG_TABLE, row, created(songs.song_of(row)), written=songs.count_created)

    payload = song_in.model_dump()
    return await idempotency.run_once(
        request, db=access.db, caller=access.caller, payload=payload, write=create, foresee=foresee
    )


@router.post(
    "/batch",
    response_model=BatchResult,
    responses={200: {"headers": REPLAYED | READ_AFTER_HEADER}, **problem_responses(400, 409, 413, 415, 422)},
    openapi_extra=reads_headers("Idempotency-Key"),
)
async def create_songs(
    songs_in: Annotated[
        list[SongCreate],
        Body(min_length=1, max_length=BATCH_SIZE_CEILING, description="1 to 1,000 songs, unless configured otherwise."),
    ],
    request: Request,
    access: WriterDep,
    on_conflict: Annotated[
        OnConflict,
        Query(
            description="For a song already there (or repeated in the batch): `skip` leaves it as it is, "
            "`update` takes the batch's spelling, and its year when it gives one (a null leaves it), "
            "`error` refuses the batch with 409."
        ),
    ] = OnConflict.SKIP,
) -> Response:
    """Adds up to 1,000 songs at once, atomically, and tells what became of each.

    If any song is invalid the batch is refused with 422, naming each one
    (`errors[].field` is `index.field`), and nothing is written.
    """
    largest = access.settings.max_batch_size
    if len(songs_in) > largest:
        raise InvalidParameter("body", "songs", f"a batch holds at most {largest} songs; this one has {len(songs_in)}")

    async def create() -> Response:
        result = await songs.create_songs(db=access.db, songs_in=songs_in, on_conflict=on_conflict)
        return Response(result.model_dump_json(), media_type="application/json")

    payload = [song.model_dump() for song in songs_in]
    return await idempotency.run_once(
        request,
        db=access.db,
        caller=access.caller,
        payload=payload,
        write=create,
        on_session=True,
        query=[("on_conflict", on_conflict.value)],
    )


@router.get(
    ONE_SONG,
    response_model=SongPublic,
    responses={
        200: {"headers": ETAG},
        304: {"description": "Not modified: the song still has the ETag in `If-None-Match`.", "headers": ETAG},
        **problem_responses(404, 412, 422),
    },
    openapi_extra=reads_headers("If-None-Match", "If-Match", "Songbook-Read-After"),
)
async def get_song(song_id: SongId, request: Request, access: ReaderDep) -> Response:
    """Gets one song, with its ETag."""
    song = await songs.get_song(db=access.db, song_id=song_id)
    if preconditions.not_modified(request, song_id, song["version"]):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": preconditions.etag(song["version"])})
    return song_response(song)


WRITE_ERRORS = problem_responses(400, 404, 409, 412, 413, 415, 422, 428)
IF_MATCH = reads_headers("If-Match", "If-None-Match")


@router.patch(
    ONE_SONG,
    response_model=SongPublic,
    responses={200: {"headers": WRITTEN}, **WRITE_ERRORS},
    openapi_extra=IF_MATCH,
)
async def update_song(song_id: SongId, changes: SongUpdate, request: Request, access: WriterDep) -> Response:
    """Changes the fields given; the others stay as they are."""
    versions = preconditions.if_match(request, required=access.settings.require_if_match)
    song = await songs.update_song(db=access.db, song_id=song_id, changes=changes, versions=versions)
    return song_response(song)


@router.put(
    ONE_SONG,
    response_model=SongPublic,
    responses={200: {"headers": WRITTEN}, **WRITE_ERRORS},
    openapi_extra=IF_MATCH,
)
async def replace_song(song_id: SongId, song_in: SongCreate, request: Request, access: WriterDep) -> Response:
    """Replaces the song: every field, a year left out being no year."""
    versions = preconditions.if_match(request, required=access.settings.require_if_match)
    song = await songs.replace_song(db=access.db, song_id=song_id, song_in=song_in, versions=versions)
    return song_response(song)


@router.delete(
    ONE_SONG,
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={204: {"description": "Removed.", "headers": READ_AFTER_HEADER}, **problem_responses(404, 412, 422, 428)},
    openapi_extra=IF_MATCH,
)
async def delete_song(song_id: SongId, request: Request, access: WriterDep) -> None:
    """Removes a song."""
    versions = preconditions.if_match(request, required=access.settings.require_if_match)
    await songs.delete_song(db=access.db, song_id=song_id, versions=versions)


EXPORT_MEDIA_TYPES = {"text/csv": Format.CSV, "application/x-ndjson": Format.NDJSON}
# Between types of the same quality: JSON named as such, then an export named as such, then a range.
_TIE_RANK = {"application/json": 0, **dict.fromkeys(EXPORT_MEDIA_TYPES, 1)}


def _export_format(accept: str) -> Format | None:
    """The export format `accept` prefers over JSON, if any (RFC 9110 quality values).

    At the same quality JSON, the listing, is chosen over an export (which takes
    no `limit`), and an export named over `*/*`.
    """
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
        choices.append((-quality, _TIE_RANK.get(media_type.lower(), 2), position, media_type.lower()))
    for quality, _, _, media_type in sorted(choices):
        if quality < 0 and media_type in EXPORT_MEDIA_TYPES:
            return EXPORT_MEDIA_TYPES[media_type]
        if quality < 0 and media_type in ("application/json", "application/*", "*/*"):
            return None
    return None


async def export_response(request: Request, db: Database, query: SongQuery, export: Format) -> StreamingResponse:
    """Every song `query` matches, streamed in `export`'s format, in id order."""
    if paging := [name for name in ("cursor", "limit", "sort") if name in request.query_params]:
        raise InvalidParameter(
            "query", paging[0], "an export has every matching song, in id order: leave out cursor, limit and sort"
        )
    chunks = songs.export_songs(db=db, query=query, file_format=export)
    # A failing database is a 503 now, before any byte is sent (the export is then closed already).
    first = await anext(chunks, None)

    async def body() -> AsyncIterator[bytes]:
        try:
            chunk = first
            while chunk is not None:
                yield chunk
                chunk = await anext(chunks, None)
        finally:
            await chunks.aclose()

    media_type = "text/csv; charset=utf-8" if export is Format.CSV else "application/x-ndjson"
    disposition = f'attachment; filename="songs.{export.value}"'
    return StreamingResponse(body(), media_type=media_type, headers={"Content-Disposition": disposition})
