"""The /songs routes: thin adapters over `app.songs`."""

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

from app import songs
from app.db import SessionDep
from app.errors import problem_responses
from app.models import SongCreate, SongPublic, SongQuery, SongUpdate
from app.routes.links import preferred_count, set_next_link

router = APIRouter(prefix="/songs", tags=["songs"], responses=problem_responses(500, 503))

SongId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The song's id.")]


@router.get(
    "",
    responses={
        200: {
            "description": "A page of the matching songs. The next page is in the `Link` header, absent on "
            "the last page; the total, when asked for with `Prefer: count=exact` (or `count=estimated`, "
            "PostgreSQL's planner estimate), in `X-Total-Count`.",
            "headers": {
                "Link": {"description": 'The next page: `<URL>; rel="next"`.', "schema": {"type": "string"}},
                "X-Total-Count": {"description": "How many songs match.", "schema": {"type": "integer"}},
                "Preference-Applied": {"description": "The count preference honoured.", "schema": {"type": "string"}},
            },
        },
        **problem_responses(422),
    },
)
async def list_songs(
    request: Request,
    response: Response,
    session: SessionDep,
    query: Annotated[SongQuery, Query()],
    prefer: Annotated[
        str | None,
        Header(description="`count=exact` or `count=estimated` to be told the total in `X-Total-Count`."),
    ] = None,
) -> list[SongPublic]:
    """Lists, filters, sorts and searches the songs, a page at a time."""
    count = preferred_count(prefer)
    page = await songs.list_songs(session=session, query=query, count=count)
    set_next_link(request, response, page.next_cursor)
    if page.total is not None:
        response.headers["X-Total-Count"] = str(page.total)
        response.headers["Preference-Applied"] = f"count={count}"
    return page.items  # type: ignore[return-value]


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
