"""Conditional requests (RFC 9110, 13): a song's version is its strong ETag."""

import re
from collections.abc import Collection

from fastapi import Request

from app.errors import PreconditionFailed, PreconditionRequired

ANY: Collection[int] | None = None  # If-Match: *, or none
_OUR_TAG = re.compile(r'"(0|[1-9][0-9]{0,8})"')  # as `etag` writes them, within the column's range


class AllBut(frozenset[int]):
    """Every version but these: what a write's `If-None-Match` leaves when `If-Match` leaves any.

    `in` answers for the versions a write may change, not for the ones listed.
    """

    def __contains__(self, version: object) -> bool:
        return not super().__contains__(version)


def etag(version: int) -> str:
    """A song's version as its strong ETag (RFC 9110): `"3"`."""
    return f'"{version}"'


def _tags(request: Request, name: str) -> list[str] | None:
    """The entity tags of the header `name`, over all its lines (RFC 9110, 5.3); None without it."""
    lines = request.headers.getlist(name)
    if not lines:
        return None
    return [tag.strip() for line in lines for tag in line.split(",") if tag.strip()]


def _if_none_match(request: Request) -> list[str] | None:
    """`If-None-Match`'s tags, as it compares them: weakly (RFC 9110, 13.1.2), `W/"1"` as `"1"`."""
    tags = _tags(request, "if-none-match")
    return None if tags is None else [tag.removeprefix("W/") for tag in tags]


def _versions(tags: list[str]) -> frozenset[int]:
    # Strong comparison: a weak tag (W/"1") never matches, nor does one that is not ours ("01").
    return frozenset(int(match[1]) for tag in tags if (match := _OUR_TAG.fullmatch(tag)))


def if_match(request: Request, *, required: bool) -> Collection[int] | None:
    """The versions a write may change: `ANY` (None), or those `If-Match` names less those `If-None-Match` does.

    `If-None-Match: *` leaves none: the song is there. If `required` (the
    `require_if_match` setting), a write without `If-Match` is refused (428).
    """
    matching = _tags(request, "if-match")
    if matching is None and required:
        raise PreconditionRequired
    named = None if matching is None or "*" in matching else _versions(matching)
    refused = _if_none_match(request)
    if refused is None:
        return named
    if "*" in refused:
        return frozenset()
    if named is None:
        return AllBut(_versions(refused))
    return named - _versions(refused)


def not_modified(request: Request, song_id: int, version: int) -> bool:
    """A read's conditions: whether `If-None-Match` names the song's ETag (304); `If-Match` not naming it is a 412."""
    matching = _tags(request, "if-match")
    if matching is not None and "*" not in matching and version not in _versions(matching):
        raise PreconditionFailed(song_id, etag(version))
    refused = _if_none_match(request)
    return refused is not None and ("*" in refused or etag(version) in refused)
