"""Conditional requests (RFC 9110): a song's version is its strong ETag."""

import re
from collections.abc import Collection

from fastapi import Request

from app.errors import PreconditionRequired

ANY: Collection[int] | None = None  # If-Match: *
_OUR_TAG = re.compile(r'"([0-9]{1,9})"')  # ASCII digits, within the column's range


def etag(version: int) -> str:
    """A song's version as its strong ETag (RFC 9110): `"3"`."""
    return f'"{version}"'


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def if_match(request: Request, *, required: bool) -> Collection[int] | None:
    """The versions `If-Match` accepts: `ANY` (None) for `*` or no header; an empty set if none can match.

    If `required` (the `require_if_match` setting), a write without it is refused (428).
    """
    header = request.headers.get("if-match")
    if header is None:
        if required:
            raise PreconditionRequired
        return ANY
    tags = _tags(header)
    if "*" in tags:
        return ANY
    # Strong comparison: a weak tag (W/"1") never matches, nor does one that is not ours.
    return {int(match[1]) for tag in tags if (match := _OUR_TAG.fullmatch(tag))}


def not_modified(request: Request, version: int) -> bool:
    """Whether `If-None-Match` names the ETag of the song's `version` (weak comparison, as GET asks)."""
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = [tag.removeprefix("W/") for tag in _tags(header)]
    return "*" in tags or etag(version) in tags
