"""The song table and, beside it, the shapes the API reads and writes."""

import unicodedata
from datetime import UTC, datetime
from typing import Annotated

import pydantic
from pydantic import AfterValidator, StringConstraints
from pydantic_core import PydanticCustomError
from sqlalchemy import CheckConstraint, DateTime, Dialect, TypeDecorator, UniqueConstraint, func
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TEXT_MAX = 200
YEAR_MIN = 1860  # the oldest recording of a song that survives


def utcnow() -> datetime:
    return datetime.now(UTC)


def song_key(text: str) -> str:
    """How names and artists compare for sameness: trimmed, NFC-normalised and case-folded."""
    return unicodedata.normalize("NFC", text.strip()).casefold()


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime: SQLite stores no zone, so values are kept in UTC and read back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: songbook stores timezone-aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Song(SQLModel, table=True):
    """A song in the catalog, one row per (name, artist) ignoring case."""

    __table_args__ = (
        # The keys are the case-folded name and artist, computed by the service:
        # lower() is ASCII-only on SQLite, so an expression index could not make
        # "BEYONCÉ" and "beyoncé" the same song there as it does on PostgreSQL.
        UniqueConstraint("name_key", "artist_key"),
        CheckConstraint(f"length(name) BETWEEN 1 AND {TEXT_MAX}", name="name_length"),
        CheckConstraint(f"length(artist) BETWEEN 1 AND {TEXT_MAX}", name="artist_length"),
        CheckConstraint(f"year IS NULL OR year BETWEEN {YEAR_MIN} AND 9999", name="year_range"),
        # Never reuse the id of a deleted song (SQLite's default would).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=TEXT_MAX)
    artist: str = Field(max_length=TEXT_MAX)
    year: int | None = Field(default=None)
    name_key: str
    artist_key: str
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, sa_column_kwargs={"server_default": func.now()}
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, sa_column_kwargs={"server_default": func.now()}
    )


def _reject_control_characters(value: str) -> str:
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise PydanticCustomError("control_characters", "must not contain control characters")
    return unicodedata.normalize("NFC", value)


def _not_in_future(year: int) -> int:
    if year > utcnow().year + 1:
        raise PydanticCustomError("year_in_future", "must not be later than next year")
    return year


SongText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TEXT_MAX),
    AfterValidator(_reject_control_characters),
]
"""A name or an artist: 1 to 200 characters once trimmed, no control characters."""

ReleaseYear = Annotated[int, pydantic.Field(ge=YEAR_MIN, strict=True), AfterValidator(_not_in_future)]
"""A plausible release year: from 1860 to next year."""


class SongCreate(SQLModel):
    """What a client sends to add a song."""

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{"name": "Yesterday", "artist": "The Beatles", "year": 1965}]},
    }

    name: SongText
    artist: SongText
    year: ReleaseYear | None = None


class SongUpdate(SQLModel):
    """A partial update: only the fields given change; `year: null` clears the year."""

    model_config = {"extra": "forbid", "json_schema_extra": {"examples": [{"year": 1966}]}}

    # May be left out, but not null: the default is outside the type on purpose.
    name: SongText = pydantic.Field(default=None)  # type: ignore[assignment]
    artist: SongText = pydantic.Field(default=None)  # type: ignore[assignment]
    year: ReleaseYear | None = None


class SongPublic(SQLModel):
    """A song as the API shows it."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": 1,
                    "name": "Yesterday",
                    "artist": "The Beatles",
                    "year": 1965,
                    "created_at": "2026-11-25T10:00:00Z",
                    "updated_at": "2026-11-25T10:00:00Z",
                }
            ]
        }
    }

    id: int
    name: str
    artist: str
    year: int | None
    created_at: datetime
    updated_at: datetime
