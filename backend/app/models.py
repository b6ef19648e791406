"""The song table and, beside it, the shapes the API reads and writes."""

from datetime import UTC, datetime
from typing import Annotated, Literal, TypedDict

import pydantic
from pydantic import AfterValidator, StringConstraints
from pydantic_core import PydanticCustomError
from sqlalchemy import CheckConstraint, DateTime, Dialect, Index, TypeDecorator, UniqueConstraint, func
from sqlmodel import AutoString, Field, SQLModel

from app.fields import TEXT_MAX, YEAR_MAX, YEAR_MIN, ReleaseYear, SongText, reject_control_characters, utcnow
from app.folding import search_fold

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# What the page and batch size settings may be raised to, at most.
PAGE_SIZE_CEILING = 10_000
BATCH_SIZE_CEILING = 10_000


# The keys sort and compare byte-wise on PostgreSQL, as on SQLite, whatever the
# database's collation: pages sorted by name come out the same on both.
KeyString = AutoString().with_variant(AutoString(collation="C"), "postgresql")

# Made by the migrations, not declared here: autogenerate cannot represent them
# (an expression index, PostgreSQL's search vector and vocabulary, SQLite's
# full-text tables), so
# migrations/env.py leaves them out of `alembic check`.
MIGRATION_ONLY_OBJECTS = frozenset(
    {"ix_song_year_sort", "search_vector", "ix_song_search_vector", "search_term", "song_search", "song_search_terms"}
)


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
        # Keyset paging: each sort key with the id that breaks its ties.
        Index("ix_song_name_key_id", "name_key", "id"),
        Index("ix_song_artist_key_id", "artist_key", "id"),
        Index("ix_song_created_at_id", "created_at", "id"),
        CheckConstraint(f"length(name) BETWEEN 1 AND {TEXT_MAX}", name="name_length"),
        CheckConstraint(f"length(artist) BETWEEN 1 AND {TEXT_MAX}", name="artist_length"),
        CheckConstraint(f"year IS NULL OR year BETWEEN {YEAR_MIN} AND {YEAR_MAX}", name="year_range"),
        # Never reuse the id of a deleted song (SQLite's default would).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=TEXT_MAX)
    artist: str = Field(max_length=TEXT_MAX)
    year: int | None = Field(default=None)
    name_key: str = Field(sa_type=KeyString)
    artist_key: str = Field(sa_type=KeyString)
    name_search: str
    artist_search: str
    # Counts the song's changes, from 1: its ETag, for optimistic concurrency.
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, sa_column_kwargs={"server_default": func.now()}
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, sa_column_kwargs={"server_default": func.now()}
    )


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


class SongRow(TypedDict):
    """A song as the hot paths read it: the fields of `SongPublic`, and the version, for the ETag."""

    id: int
    name: str
    artist: str
    year: int | None
    created_at: datetime
    updated_at: datetime
    version: int


SearchText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TEXT_MAX),
    AfterValidator(reject_control_characters),
]

SEARCH_WORDS_MAX = 8


def _few_words(query: str) -> str:
    # Each word is a condition of every tier's query: one left out would find songs without it.
    if len(set(search_fold(query).split())) > SEARCH_WORDS_MAX:
        raise PydanticCustomError(
            "too_many_words", "must have at most {most} different words", {"most": SEARCH_WORDS_MAX}
        )
    return query


SearchQuery = Annotated[SearchText, AfterValidator(_few_words)]
"""A search (`q`): at most eight different words, once folded."""


# A cursor is opaque: base64url, made by the service for one listing. Another is refused (422).
CURSOR_PATTERN = "^[A-Za-z0-9_-]+$"
# Room for the longest: two sort keys of 200 characters that fold to three times as many bytes (Hangul).
CURSOR_MAX = 6000
CURSOR_FORM = (
    "Opaque (base64url, up to 6,000 characters): only a cursor this service issued for the same "
    "filters, sort and search is accepted, else 422."
)


class SongQuery(SQLModel):
    """Which songs `GET /songs` answers, in what order, a page at a time."""

    artist: SongText | None = pydantic.Field(default=None, description="Exactly this artist, ignoring case.")
    name: SongText | None = pydantic.Field(default=None, description="Exactly this name, ignoring case.")
    year: int | None = pydantic.Field(default=None, ge=YEAR_MIN, le=YEAR_MAX, description="Released this year.")
    year_from: int | None = pydantic.Field(
        default=None, ge=YEAR_MIN, le=YEAR_MAX, description="Released this year or later."
    )
    year_to: int | None = pydantic.Field(
        default=None, ge=YEAR_MIN, le=YEAR_MAX, description="Released this year or earlier."
    )
    q: SearchQuery | None = pydantic.Field(
        default=None,
        description="Fuzzy search in names and artists, tolerant of typos and accents; ranked by relevance. "
        "At most 8 different words.",
        examples=["beatels"],
    )
    sort: str | None = pydantic.Field(
        default=None,
        description="Comma-separated keys among name, artist, year, created_at, id (and relevance with `q`); "
        "`-` before a key sorts it descending. Ties are broken by id. "
        "Default: relevance with `q`, else id.",
        examples=["artist,-year"],
    )
    # Its largest is the service's `max_page_size` (`routes.links.check_page_size`), named in its error and
    # in the OpenAPI document (`openapi.describe`).
    limit: int = pydantic.Field(
        default=50, ge=1, description="Songs per page: at most 500, unless configured otherwise."
    )
    cursor: str | None = pydantic.Field(
        default=None,
        max_length=CURSOR_MAX,
        pattern=CURSOR_PATTERN,
        description='Where the page starts: from the previous page\'s `Link: <...>; rel="next"` URL. ' + CURSOR_FORM,
    )


class ArtistQuery(SQLModel):
    """Which artists `GET /artists` answers."""

    prefix: SearchText | None = pydantic.Field(
        default=None, description="Artists whose name starts with this, ignoring case."
    )
    sort: str | None = pydantic.Field(default=None, description="name, -name, songs or -songs (default name).")
    limit: int = pydantic.Field(
        default=50, ge=1, description="Artists per page: at most 500, unless configured otherwise."
    )
    cursor: str | None = pydantic.Field(
        default=None,
        max_length=CURSOR_MAX,
        pattern=CURSOR_PATTERN,
        description="From the `Link` of the previous page. " + CURSOR_FORM,
    )


class ArtistPublic(SQLModel):
    """An artist and how many songs the catalog has by them."""

    model_config = {"json_schema_extra": {"examples": [{"name": "The Beatles", "songs": 213}]}}

    name: str
    songs: int


class BatchItem(SQLModel):
    """What became of one song of a batch."""

    index: int = pydantic.Field(description="The song's place in the batch, from 0.")
    status: Literal["created", "updated", "duplicate"] = pydantic.Field(
        description="`duplicate`: the catalog has it already (or an earlier item is the same song), left as it was."
    )
    id: int = pydantic.Field(description="The song's id in the catalog.")


class BatchResult(SQLModel):
    """The answer to a batch: how many songs were created, updated, or found there already; and each item."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "created": 1,
                    "updated": 0,
                    "duplicates": 1,
                    "items": [
                        {"index": 0, "status": "created", "id": 8},
                        {"index": 1, "status": "duplicate", "id": 7},
                    ],
                }
            ]
        }
    }

    created: int
    updated: int
    duplicates: int
    items: list[BatchItem]


Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")  # each allows what those before it do


class ApiKey(SQLModel, table=True):
    """A key a client sends as `Authorization: Bearer`; stored only as its SHA-256."""

    __tablename__ = "api_key"
    __table_args__ = (CheckConstraint("scope IN ('read', 'write', 'admin')", name="scope"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=TEXT_MAX, unique=True)
    scope: str = Field(max_length=5)
    # The key's public part, by which it is found; the rest is only hashed.
    prefix: str = Field(max_length=16, unique=True)
    secret_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiKeyCreate(SQLModel):
    """A key to make: its name, unique, and what it may do."""

    model_config = {"extra": "forbid", "json_schema_extra": {"examples": [{"name": "importer", "scope": "write"}]}}

    name: SongText
    scope: Scope


class ApiKeyPublic(SQLModel):
    """A key as listed: never its secret."""

    id: int
    name: str
    scope: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    """A new key, with its secret: shown this once, never again."""

    key: str


class IdempotencyRecord(SQLModel, table=True):
    """A write sent with an `Idempotency-Key`, and the answer it got: replayed to a retry of it.

    `api_key_id` names the key that sent it, without a foreign key: PostgreSQL's check of one would
    lock the key's row on every keyed write, and writes of one key in flight at once would each make
    a MultiXact of all the others (migration d3f8a1b6c9e2). A record is written only for a key just
    checked (or under `idempotency.NO_API_KEY`, for writes let through without one); keys are revoked,
    never deleted; and a record expires whatever its key.
    """

    __tablename__ = "idempotency_key"
    __table_args__ = (Index("ix_idempotency_key_expires_at", "expires_at"),)

    api_key_id: int = Field(primary_key=True)
    key: str = Field(max_length=255, primary_key=True)
    request_hash: str = Field(max_length=64)
    # None while the first request is being answered.
    status: int | None = Field(default=None)
    response_headers: str | None = Field(default=None)  # JSON
    response_body: str | None = Field(default=None)
    claimed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
