"""The /artists route: the catalog's artists and how many songs each has."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app import songs
from app.auth import ReaderDep
from app.models import ArtistPublic, ArtistQuery
from app.openapi import problem_responses, reads_headers
from app.routes.links import check_page_size, set_next_link

router = APIRouter(prefix="/artists", tags=["artists"], responses=problem_responses(401, 403, 500, 503))


@router.get(
    "",
    responses={
        200: {
            "description": "A page of artists; the next page is in the `Link` header. "
            "An artist's songs are at `/songs?artist=NAME`.",
            "headers": {"Link": {"description": 'The next page: `<URL>; rel="next"`.', "schema": {"type": "string"}}},
        },
        **problem_responses(422),
    },
    openapi_extra=reads_headers("Songbook-Read-After"),
)
async def list_artists(
    request: Request,
    response: Response,
    query: Annotated[ArtistQuery, Query()],
    access: ReaderDep,
) -> list[ArtistPublic]:
    """Lists the artists, by name or by number of songs."""
    await check_page_size(request, query)
    page = await songs.list_artists(db=access.db, query=query)
    set_next_link(request, response, page.next_cursor)
    return page.items
