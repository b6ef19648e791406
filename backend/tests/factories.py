"""Test data, made through the catalog logic as a client would make it."""

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from app import songs
from app.db import Database
from app.models import Song, SongCreate


async def make_song(
    session: AsyncSession, *, name: str = "Yesterday", artist: str = "The Beatles", year: int | None = 1965
) -> Song:
    assert isinstance(session.bind, AsyncEngine)
    created = await songs.create_song(
        db=Database(session.bind, pool=None), song_in=SongCreate(name=name, artist=artist, year=year)
    )
    await session.commit()  # a read begun before would not see it, on SQLite
    song = await session.get(Song, created["id"])
    assert song is not None
    return song
