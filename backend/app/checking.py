"""An import's rows checked: validated, with the keys and search texts they are staged with.

What a large import's worker process runs (`serve`, as `python -c "from app.checking import serve;
serve()"`). It imports nothing of the database's or the web framework's, only pydantic and the
song's field types (`app.fields`): about half the memory of a process that imports the app (47 MB
RSS against 88) and a fifth of its start-up time.
"""

import contextlib
import gc
import pickle
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Annotated, Any, NotRequired

import pydantic
from pydantic import AfterValidator, AwareDatetime, TypeAdapter
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs its TypedDict before Python 3.12

from app.fields import ID_MAX, ReleaseYear, SongText
from app.folding import search_fold, song_key

ARTIST_TEXTS_ROOM = 2_000_000  # characters of artists' derived texts a worker keeps (ArtistTexts): 2 to 8 MB


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is in year 0 in UTC
        raise PydanticCustomError("datetime_range", "must be a time between the years 1 and 9999 in UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
"""An export's timestamp: with its offset, and one that UTC can hold (as the database stores it)."""


class ImportedSong(TypedDict):
    """One song of an import: the fields of `SongCreate`, and the id and timestamps an export carries.

    A TypedDict, not a model: a batch is validated in one call (`_validate`), by
    pydantic's own loop, with no model built per row. Other fields are ignored.
    """

    name: SongText
    artist: SongText
    year: NotRequired[ReleaseYear | None]
    id: NotRequired[Annotated[int, pydantic.Field(ge=1, le=ID_MAX, strict=True)] | None]
    created_at: NotRequired[UtcDatetime | None]
    updated_at: NotRequired[UtcDatetime | None]


_SONGS = TypeAdapter(list[ImportedSong])


@dataclass(slots=True)
class Rejected:
    """A row that is not imported, and why; `source` names its file."""

    source: str
    line: int
    reason: str
    existing_id: int | None = None  # the catalog's song it repeats
    same_as: int | None = None  # the line of the row it repeats

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


Staged = tuple[Any, ...] | Rejected


def check_rows(
    source: str, rows: list[tuple[int, dict[str, Any] | None, str | None]], artists: "ArtistTexts | None" = None
) -> list[Staged]:
    """Each (line, fields, error) row ready to stage, or why it is rejected; in a worker process for large imports.

    Plain tuples, not `RawRow`s: a dataclass with slots pickles several times slower.
    `artists` keeps the texts derived from each artist across calls (the worker's).
    """
    artists = ArtistTexts() if artists is None else artists
    validated = iter(_validate([fields for _, fields, _ in rows if fields is not None]))
    staged: list[Staged] = []
    for line, fields, error in rows:
        song = (error or "unreadable") if fields is None else next(validated)
        staged.append(Rejected(source, line, song) if isinstance(song, str) else _staged(song, artists))
    return staged


def _validate(rows: list[dict[str, Any]]) -> list[ImportedSong | str]:
    """Each row validated, or why it is not valid.

    The whole batch in one call (half the time of a model validated row by row);
    if some rows fail, the others are validated again without them.
    """
    try:
        return list(_SONGS.validate_python(rows))
    except pydantic.ValidationError as exc:
        reasons: dict[int, list[str]] = {}
        for error in exc.errors():
            index, *loc = error["loc"]
            reasons.setdefault(int(index), []).append(f"{'.'.join(map(str, loc)) or 'row'}: {error['msg']}")
    valid = iter(_SONGS.validate_python([row for index, row in enumerate(rows) if index not in reasons]))
    return ["; ".join(reasons[index]) if index in reasons else next(valid) for index in range(len(rows))]


class ArtistTexts(dict[str, tuple[str, str]]):
    """The key and search text of each artist met: a catalog's songs share their artists.

    Derived once an artist instead of once a song (a million songs of the benchmark have 16,463
    artists, half of them not ASCII: folding those is 2 µs). Bounded in characters: a file of a
    million different artists grows it no further.
    """

    def __init__(self, room: int = ARTIST_TEXTS_ROOM) -> None:
        super().__init__()
        self.room = room  # characters it may still keep

    def __missing__(self, artist: str) -> tuple[str, str]:
        derived = song_key(artist), search_fold(artist)
        size = len(artist) + len(derived[0]) + len(derived[1])
        if size <= self.room:
            self.room -= size
            self[artist] = derived
        return derived


def _staged(song: ImportedSong, artists: ArtistTexts) -> tuple[Any, ...]:
    """A valid row as staged, with the keys and search texts `folding.derived_columns` gives (without its dict)."""
    name, artist = song["name"], song["artist"]
    artist_key, artist_search = artists[artist]
    return (
        song.get("id"),
        name,
        artist,
        song.get("year"),
        song_key(name),
        artist_key,
        search_fold(name),
        artist_search,
        song.get("created_at"),
        song.get("updated_at"),
    )


def serve() -> None:
    """The worker: checks each batch it reads (standard input), writes each result (standard output), in order.

    Until the import's process is gone: the end of its input, or a message cut short. Each message is one pickle.
    """
    requests, results = sys.stdin.buffer, sys.stdout.buffer
    # No cyclic garbage collection: the rows are millions of short-lived objects, none in a cycle.
    gc.disable()
    artists = ArtistTexts()
    with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError):
        write_message(results, None)  # ready: what it runs is imported
        while True:
            source, rows = pickle.load(requests)  # noqa: S301 (the import's own process, through its pipe)
            try:
                checked: list[Staged] | Exception = check_rows(source, rows, artists)
            except Exception as exc:  # a bug: the import's process raises it
                checked = exc
            write_message(results, checked)


def write_message(stream: IO[bytes], message: object) -> None:
    """One message to the other end of the worker's pipe, sent whole: one pickle."""
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()
