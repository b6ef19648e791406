"""Test data, made through the catalog logic as a client would make it."""

from sqlmodel.ext.asyncio.session import AsyncSession

from app import songs
from app.models import Song, SongCreate


async def make_song(
    session: AsyncSession, *, name: str = "Yesterday", artist: str = "The Beatles", year: int | None = 1965
) -> Song:
    return await songs.create_song(session=session, song_in=SongCreate(name=name, artist=artist, year=year))
