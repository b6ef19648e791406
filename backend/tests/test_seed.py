"""Synthetic songs (`songbook seed`) and the bulk insert under them."""

import httpx
import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from app import songs
from app.models import SongCreate
from app.seed import generate_songs


def test_the_same_seed_makes_the_same_songs() -> None:
    assert list(generate_songs(50, seed=3)) == list(generate_songs(50, seed=3))
    assert list(generate_songs(50, seed=3)) != list(generate_songs(50, seed=4))


def test_songs_are_distinct_valid_and_varied() -> None:
    generated = list(generate_songs(5000))

    assert len({(song["name_key"], song["artist_key"]) for song in generated}) == 5000
    for song in generated:
        SongCreate(name=song["name"], artist=song["artist"], year=song["year"])
    assert len({song["artist"] for song in generated}) > 300
    assert any(not song["artist"].isascii() for song in generated)
    assert any(song["year"] is None for song in generated)


async def test_inserted_songs_are_listed_and_searchable(client: httpx.AsyncClient, session: AsyncSession) -> None:
    inserted = await songs.insert_songs(session=session, songs=generate_songs(300), batch_size=100)

    listed = await client.get("/songs?limit=500")
    beatles = await client.get("/songs?q=beatels&limit=500")

    assert inserted == 300
    assert len(listed.json()) == 300
    assert beatles.json()
    assert all(song["artist"] == "The Beatles" for song in beatles.json()[:5])


async def test_a_failed_batch_adds_nothing_and_search_keeps_up(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await songs.insert_songs(session=session, songs=generate_songs(10))

    with pytest.raises(IntegrityError):
        await songs.insert_songs(session=session, songs=[*generate_songs(15)][5:])
    await session.rollback()
    created = await client.post("/songs", json={"name": "Karma Police", "artist": "Radiohead"})

    assert len((await client.get("/songs")).json()) == 11
    assert created.status_code == 201
    assert [song["name"] for song in (await client.get("/songs?q=karma polise")).json()] == ["Karma Police"]
