"""The catalog: every read and write of songs, as plain async functions over a session."""

from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import DuplicateSong, NotFound
from app.models import Song, SongCreate, SongUpdate, song_key, utcnow


def _with_keys(values: dict[str, Any]) -> dict[str, Any]:
    """The values, plus the comparison key of the name and of the artist they set."""
    keys = {f"{field}_key": song_key(values[field]) for field in ("name", "artist") if field in values}
    return values | keys


async def create_song(*, session: AsyncSession, song_in: SongCreate) -> Song:
    """Adds a song; a `DuplicateSong` error if the catalog has it already."""
    now = utcnow()
    stamps = {"created_at": now, "updated_at": now}
    song = Song.model_validate(song_in, update=_with_keys(song_in.model_dump()) | stamps)
    session.add(song)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        await _raise_if_duplicate(session=session, name_key=song.name_key, artist_key=song.artist_key)
        raise
    return song


async def get_song(*, session: AsyncSession, song_id: int) -> Song:
    """Gets a song by its id."""
    song = await session.get(Song, song_id)
    if song is None:
        raise _not_found(song_id)
    return song


async def list_songs(*, session: AsyncSession, limit: int, after_id: int | None = None) -> list[Song]:
    """A page of songs in id order, starting after `after_id`."""
    statement = select(Song).order_by(col(Song.id)).limit(limit)
    if after_id is not None:
        statement = statement.where(col(Song.id) > after_id)
    return list(await session.exec(statement))


async def update_song(*, session: AsyncSession, song_id: int, changes: SongUpdate) -> Song:
    """Changes the fields given in `changes`; a `DuplicateSong` error if that makes it another song."""
    values = changes.model_dump(exclude_unset=True)
    if not values:
        return await get_song(session=session, song_id=song_id)
    # One UPDATE ... RETURNING: no read-then-write for a concurrent writer to slip between.
    statement = (
        update(Song)
        .where(col(Song.id) == song_id)
        .values(**_with_keys(values), updated_at=utcnow())
        .returning(Song)
        .execution_options(populate_existing=True)
    )
    try:
        song: Song | None = (await session.exec(statement)).scalar_one_or_none()
        await session.commit()
    except IntegrityError:
        await session.rollback()
        current = await get_song(session=session, song_id=song_id)
        merged = {"name": current.name, "artist": current.artist} | values
        await _raise_if_duplicate(
            session=session, name_key=song_key(merged["name"]), artist_key=song_key(merged["artist"])
        )
        raise
    if song is None:
        raise _not_found(song_id)
    return song


async def delete_song(*, session: AsyncSession, song_id: int) -> None:
    """Removes a song from the catalog."""
    result = await session.exec(delete(Song).where(col(Song.id) == song_id).returning(col(Song.id)))
    deleted = result.scalar_one_or_none()
    await session.commit()
    if deleted is None:
        raise _not_found(song_id)


async def find_song_id(*, session: AsyncSession, name_key: str, artist_key: str) -> int | None:
    """The id of the song with these keys, if the catalog has it."""
    statement = select(Song.id).where(Song.name_key == name_key, Song.artist_key == artist_key)
    return (await session.exec(statement)).first()


async def _raise_if_duplicate(*, session: AsyncSession, name_key: str, artist_key: str) -> None:
    existing_id = await find_song_id(session=session, name_key=name_key, artist_key=artist_key)
    if existing_id is not None:
        raise DuplicateSong(existing_id)


def _not_found(song_id: int) -> NotFound:
    return NotFound(f"No song has id {song_id}.")
