"""Test data, made through the catalog logic as a client would make it."""

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from app import songs
from app.db import Database
from app.models import SongCreate, SongRead


async def make_song(
    session: AsyncSession, *, name: str = "Yesterday", artist: str = "The Beatles", year: int | None = 1965
) -> SongRead:
    assert isinstance(session.bind, AsyncEngine)
    db = Database(session.bind, pool=None)
    return await songs.create_song(db=db, song_in=SongCreate(name=name, artist=artist, year=year))
