"""Opaque keyset cursors: the sort values of the last row of a page."""

import base64
import binascii
import json
from typing import Annotated

from fastapi import Query

from app.errors import InvalidParameter

LIMIT_DEFAULT = 50
LIMIT_MAX = 500

Limit = Annotated[int, Query(ge=1, le=LIMIT_MAX, description="Songs per page.")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=1000,
        description='Where the page starts: the `cursor` of the previous page\'s `Link: rel="next"` URL.',
    ),
]


def encode_cursor(values: list[int]) -> str:
    """The cursor that resumes after a row whose sort key is `values`."""
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(token: str, *, length: int) -> list[int]:
    """The sort key a cursor holds; a 422 problem when it is not one this service made."""
    try:
        values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        values = None
    if (
        not isinstance(values, list)
        or len(values) != length
        or not all(type(value) is int and 0 <= value < 2**63 for value in values)
    ):
        raise InvalidParameter("query", "cursor", "not a cursor this service issued", "cursor_invalid")
    return values
