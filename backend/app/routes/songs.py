"""The /songs routes: thin adapters over `app.songs`."""

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from app import songs
from app.db import SessionDep
from app.errors import problem_responses
from app.models import SongCreate, SongPublic, SongUpdate
from app.paging import LIMIT_DEFAULT, Cursor, Limit, decode_cursor, encode_cursor

router = APIRouter(prefix="/songs", tags=["songs"], responses=problem_responses(500, 503))

SongId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The song's id.")]


@router.get(
    "",
    responses={
        200: {
            "description": 'A page of songs in id order. `Link: <...>; rel="next"` gives the next page, '
            "absent on the last one.",
            "headers": {"Link": {"description": "The next page.", "schema": {"type": "string"}}},
        },
        **problem_responses(422),
    },
)
async def list_songs(
    request: Request, response: Response, session: SessionDep, limit: Limit = LIMIT_DEFAULT, cursor: Cursor = None
) -> list[SongPublic]:
    """Lists the songs, a page at a time."""
    after_id = decode_cursor(cursor, length=1)[0] if cursor else None
    page = await songs.list_songs(session=session, limit=limit, after_id=after_id)
    if len(page) == limit:
        assert page[-1].id is not None
        next_url = request.url.include_query_params(limit=limit, cursor=encode_cursor([page[-1].id]))
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return page  # type: ignore[return-value]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": {"Location": {"description": "The new song's URL.", "schema": {"type": "string"}}}},
        **problem_responses(400, 409, 413, 415, 422),
    },
)
async def create_song(song_in: SongCreate, response: Response, session: SessionDep) -> SongPublic:
    """Adds a song; 409 with the existing song's id if the catalog has it already."""
    song = await songs.create_song(session=session, song_in=song_in)
    response.headers["Location"] = f"/songs/{song.id}"
    return song  # type: ignore[return-value]


@router.get("/{song_id}", responses=problem_responses(404, 422))
async def get_song(song_id: SongId, session: SessionDep) -> SongPublic:
    """Gets one song."""
    return await songs.get_song(session=session, song_id=song_id)  # type: ignore[return-value]


@router.patch("/{song_id}", responses=problem_responses(400, 404, 409, 413, 415, 422))
async def update_song(song_id: SongId, changes: SongUpdate, session: SessionDep) -> SongPublic:
    """Changes the fields given; the others stay as they are."""
    return await songs.update_song(session=session, song_id=song_id, changes=changes)  # type: ignore[return-value]


@router.delete(
    "/{song_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404, 422),
)
async def delete_song(song_id: SongId, session: SessionDep) -> None:
    """Removes a song."""
    await songs.delete_song(session=session, song_id=song_id)
