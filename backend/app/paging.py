"""Keyset paging: sort orders, opaque cursors, and the predicate that resumes after one.

A cursor holds the sort key of the last row of a page (and the sort it belongs
to); the next page is the rows that sort after it. Unlike an offset, that reads
no skipped rows, and rows added before the cursor do not shift the pages after
it (a row committed late with an earlier key is not revisited).
"""

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, tuple_
from sqlalchemy.orm import Mapped

from app.errors import InvalidParameter

ValueKind = type[str] | type[int] | type[float] | type[datetime]
# A signature of more bytes than this (a long search, folded; long filters) is kept in a cursor as a hash.
SIGNATURE_MAX = 200


@dataclass(frozen=True)
class SortKey:
    """One key of a sort order: an SQL expression, its direction, and the type of its values."""

    name: str
    expression: ColumnElement[Any] | Mapped[Any]
    kind: ValueKind
    descending: bool = False

    def ordering(self) -> ColumnElement[Any]:
        return self.expression.desc() if self.descending else self.expression.asc()


def after(keys: Sequence[SortKey], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows that sort strictly after the row whose key is `values`."""
    if len({key.descending for key in keys}) == 1:
        # One direction: a row-value comparison, which an index on the keys serves.
        row, cursor = tuple_(*(key.expression for key in keys)), tuple_(*values)
        return row < cursor if keys[0].descending else row > cursor
    # Mixed directions: (k1 after v1) or (k1 = v1 and k2 after v2) or ...
    clauses: list[ColumnElement[bool]] = []
    for i, key in enumerate(keys):
        ties = [keys[j].expression == values[j] for j in range(i)]
        beyond = key.expression < values[i] if key.descending else key.expression > values[i]
        clauses.append(and_(*ties, beyond))
    return or_(false(), *clauses)


def encode_cursor(sort: str, values: Sequence[Any]) -> str:
    """The cursor that resumes `sort` after a row whose key is `values`."""
    plain = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    payload = json.dumps({"s": _sealed(sort), "v": plain}, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _sealed(sort: str) -> str:
    """What a cursor holds of its signature: a long one as a hash, so that the cursor stays within the
    length a request's `cursor` may have (`models.CURSOR_MAX`)."""
    if len(sort.encode()) <= SIGNATURE_MAX:
        return sort
    return "#" + hashlib.blake2b(sort.encode(), digest_size=16).hexdigest()


def decode_cursor(token: str, sort: str, kinds: Sequence[ValueKind]) -> list[Any]:
    """The key a cursor holds; a 422 problem when it is not one this service made for `sort`."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("v"), list):
        raise InvalidParameter("query", "cursor", "not a cursor this service issued", "cursor_invalid")
    if payload.get("s") != _sealed(sort):
        raise InvalidParameter(
            "query",
            "cursor",
            "this cursor belongs to another sort order or search, or the catalog's words for this search "
            "have changed since: start again from the first page",
            "cursor_mismatch",
        )
    values = payload["v"]
    if len(values) != len(kinds):
        raise InvalidParameter("query", "cursor", "not a cursor this service issued", "cursor_invalid")
    return [_value(value, kind) for value, kind in zip(values, kinds, strict=True)]


def _value(value: Any, kind: ValueKind) -> Any:
    """A cursor value, checked against the type its sort key has."""
    if kind is datetime and isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is not None:
                return parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    elif kind is float and type(value) in (int, float):
        return float(value)
    elif (kind is int and type(value) is int and -(2**31) <= value < 2**31) or (
        kind is str and type(value) is str and "\x00" not in value and _is_text(value)
    ):  # the columns are 32-bit
        return value
    raise InvalidParameter("query", "cursor", "not a cursor this service issued", "cursor_invalid")


def _is_text(value: str) -> bool:
    """Whether `value` can be stored: JSON can spell a lone surrogate, which no UTF-8 text holds."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
