"""Songs as JSON answers, written from the catalog's rows by orjson."""

from collections.abc import Iterable

import orjson
from fastapi import Response

from app.models import SongPublic, SongRow
from app.preconditions import etag

JSON = "application/json"
PUBLIC_FIELDS = tuple(SongPublic.model_fields)


def public(song: SongRow) -> dict[str, object]:
    """What the API shows of a song: `SongPublic`'s fields."""
    return {field: song[field] for field in PUBLIC_FIELDS}  # type: ignore[literal-required]


def public_json(content: object) -> bytes:
    """JSON of songs made `public`, as pydantic would write `SongPublic` (a test holds it to that).

    The rows are valid already: validating them into models again would cost
    ten times what orjson takes to write them (backend/README.md, "Speed").
    """
    return orjson.dumps(content, option=orjson.OPT_UTC_Z)


def song_response(song: SongRow, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """One song, with its ETag."""
    headers = {"ETag": etag(song["version"])} | (headers or {})
    return Response(public_json(public(song)), status_code=status_code, media_type=JSON, headers=headers)


def songs_response(songs: Iterable[SongRow]) -> Response:
    """A page of songs."""
    return Response(public_json([public(song) for song in songs]), media_type=JSON)
