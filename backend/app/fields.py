"""What a song's fields may hold: the checked types the API's models and an import's checks share.

Nothing of the database's or the web framework's: the worker process that checks a large
import's rows (`app.checking`) imports this, and only this of the app, beside pydantic.
"""

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated

import pydantic
from pydantic import AfterValidator, BeforeValidator, StringConstraints
from pydantic_core import PydanticCustomError

TEXT_MAX = 200
YEAR_MIN = 1860  # the oldest recording of a song that survives
YEAR_MAX = 9999
ID_MAX = 2**31 - 1  # the song table's ids are 32-bit integers


def utcnow() -> datetime:
    return datetime.now(UTC)


def _nfc(value: object) -> object:
    # Before the length is checked: normalising can lengthen a string.
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


# Unicode's control characters (category Cc) and line breaks (Zl, Zp), and the surrogates that no UTF-8 text can hold.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# A character that shows: not a space, nor one of Unicode's default ignorable code points (a zero-width
# space, a soft hyphen, a variation selector, the Hangul fillers: drawn as nothing), nor the Braille blank.
_SHOWS = re.compile(
    "[^\\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def reject_control_characters(value: str) -> str:
    if value.isprintable() and " " < value[:1] < "\x7f":
        return value  # nearly every text: no control characters, and its first one (trimmed already) shows
    if not value.isprintable():
        if _CONTROL.search(value):
            raise PydanticCustomError("control_characters", "must not contain control characters")
        if _SURROGATE.search(value):
            raise PydanticCustomError("surrogates", "must be valid Unicode text (it has a lone surrogate)")
    if not _SHOWS.search(value):  # found at the first character of nearly every text
        raise PydanticCustomError("invisible", "must have a character that shows (it has only invisible ones)")
    return value


# Any year up to the one after the year the process started is no later than next year: only a later one
# needs the clock, which a bulk import of a million songs would otherwise read a million times (half a second).
_NEXT_YEAR_AT_START = utcnow().year + 1


def _not_in_future(year: int) -> int:
    if year > _NEXT_YEAR_AT_START and year > utcnow().year + 1:
        raise PydanticCustomError("year_in_future", "must not be later than next year")
    return year


SongText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TEXT_MAX),
    # A "before" validator runs ahead of all that stands to its left: NFC first.
    BeforeValidator(_nfc),
    AfterValidator(reject_control_characters),
]
"""A name or an artist: 1 to 200 characters once trimmed, no control characters."""

ReleaseYear = Annotated[int, pydantic.Field(ge=YEAR_MIN, strict=True), AfterValidator(_not_in_future)]
"""A plausible release year: from 1860 to next year."""
