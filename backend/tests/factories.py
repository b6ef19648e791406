"""Test data, made through the catalog logic as a client would make it."""

from app import songs
from app.db import Database
from app.models import SongCreate, SongRow


async def make_song(
    db: Database, *, name: str = "Yesterday", artist: str = "The Beatles", year: int | None = 1965
) -> SongRow:
    return await songs.create_song(db=db, song_in=SongCreate(name=name, artist=artist, year=year))
