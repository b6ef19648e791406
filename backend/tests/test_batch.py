"""POST /songs/batch: many songs in one atomic request, an answer for each."""

from typing import Any

import httpx
import pytest

from app import songs
from app.db import Database
from app.importing import Import
from tests.factories import make_song


async def test_a_batch_creates_each_new_song_and_names_those_already_there(
    client: httpx.AsyncClient, db: Database
) -> None:
    existing = await make_song(db, name="Yesterday", artist="The Beatles")

    response = await client.post(
        "/songs/batch",
        json=[
            {"name": "Halo", "artist": "Beyoncé", "year": 2008},
            {"name": "YESTERDAY", "artist": "the beatles"},
            {"name": "Creep", "artist": "Radiohead"},
            {"name": "halo", "artist": "BEYONCÉ"},
        ],
    )

    assert response.status_code == 200
    body = response.json()
    halo, creep = body["items"][0]["id"], body["items"][2]["id"]
    assert body == {
        "created": 2,
        "updated": 0,
        "duplicates": 2,
        "items": [
            {"index": 0, "status": "created", "id": halo},
            {"index": 1, "status": "duplicate", "id": existing["id"]},
            {"index": 2, "status": "created", "id": creep},
            {"index": 3, "status": "duplicate", "id": halo},
        ],
    }
    assert (await client.get(f"/songs/{halo}")).json()["name"] == "Halo"
    assert [song["id"] for song in (await client.get("/songs?q=beyonse")).json()] == [halo]


async def test_update_takes_the_batchs_spelling_and_year(client: httpx.AsyncClient, db: Database) -> None:
    existing = await make_song(db, name="Yesterday", artist="The Beatles", year=1966)

    response = await client.post(
        "/songs/batch?on_conflict=update", json=[{"name": "YESTERDAY", "artist": "The Beatles", "year": 1965}]
    )

    assert response.json()["items"] == [{"index": 0, "status": "updated", "id": existing["id"]}]
    song = (await client.get(f"/songs/{existing['id']}")).json()
    assert (song["name"], song["year"]) == ("YESTERDAY", 1965)
    assert song["updated_at"] > song["created_at"]


async def test_update_keeps_the_year_an_earlier_song_of_the_batch_gave(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/songs/batch?on_conflict=update",
        json=[{"name": "Halo", "artist": "Beyoncé", "year": 2008}, {"name": "HALO", "artist": "beyoncé"}],
    )

    [song] = (await client.get("/songs")).json()
    assert response.status_code == 200
    assert (song["name"], song["year"]) == ("HALO", 2008)


async def test_under_error_a_duplicate_refuses_the_whole_batch(client: httpx.AsyncClient, db: Database) -> None:
    existing = await make_song(db, name="Yesterday", artist="The Beatles")

    response = await client.post(
        "/songs/batch?on_conflict=error",
        json=[
            {"name": "Halo", "artist": "Beyoncé"},
            {"name": "Yesterday", "artist": "The Beatles"},
            {"name": "HALO", "artist": "beyoncé"},
        ],
    )

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "duplicate-songs"
    assert response.json()["duplicates"] == [{"index": 1, "existing_id": existing["id"]}, {"index": 2, "same_as": 0}]
    assert len((await client.get("/songs")).json()) == 1


async def test_under_error_a_song_another_request_adds_meanwhile_refuses_the_whole_batch(
    client: httpx.AsyncClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.dialect == "sqlite":
        pytest.skip("SQLite's batch holds the write lock from its start: no song is added meanwhile")
    insert = Import._insert

    async def added_meanwhile(job: Import, *args: Any, **kwargs: Any) -> set[tuple[str, str]]:
        # Committed by another request after the batch found the catalog without it, before its insert.
        await make_song(db, name="Creep", artist="Radiohead")
        return await insert(job, *args, **kwargs)

    monkeypatch.setattr(Import, "_insert", added_meanwhile)

    response = await client.post(
        "/songs/batch?on_conflict=error",
        json=[{"name": "Halo", "artist": "Beyoncé"}, {"name": "Creep", "artist": "Radiohead"}],
    )

    assert response.status_code == 409, response.text
    creep = [song for song in (await client.get("/songs")).json() if song["name"] == "Creep"]
    assert response.json()["duplicates"] == [{"index": 1, "existing_id": creep[0]["id"]}]
    assert [song["name"] for song in (await client.get("/songs")).json()] == ["Creep"]


async def test_a_song_found_there_and_deleted_meanwhile_is_still_answered_for(
    client: httpx.AsyncClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.dialect == "sqlite":
        pytest.skip("SQLite's batch holds the write lock from its start: no song is deleted meanwhile")
    existing = await make_song(db, name="Creep", artist="Radiohead")
    insert = Import._insert

    async def deleted_meanwhile(job: Import, *args: Any, **kwargs: Any) -> set[tuple[str, str]]:
        # Deleted by another request after the batch found it there.
        await songs.delete_song(db=db, song_id=existing["id"])
        return await insert(job, *args, **kwargs)

    monkeypatch.setattr(Import, "_insert", deleted_meanwhile)

    response = await client.post(
        "/songs/batch", json=[{"name": "Halo", "artist": "Beyoncé"}, {"name": "Creep", "artist": "Radiohead"}]
    )

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [(item["index"], item["status"]) for item in items] == [(0, "created"), (1, "duplicate")]
    assert items[1]["id"] == existing["id"]


async def test_an_invalid_song_refuses_the_whole_batch_naming_each(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/songs/batch",
        json=[{"name": "Halo", "artist": "Beyoncé"}, {"name": "", "artist": "X"}, {"name": "Y", "year": 1}],
    )

    assert response.status_code == 422
    fields = [(error["field"], error["type"]) for error in response.json()["errors"]]
    assert fields == [("1.name", "string_too_short"), ("2.artist", "missing"), ("2.year", "greater_than_equal")]
    assert (await client.get("/songs")).json() == []


@pytest.mark.parametrize(("count", "message"), [(0, "at least 1 item"), (1001, "a batch holds at most 1000 songs")])
async def test_a_batch_holds_1_to_1000_songs(client: httpx.AsyncClient, count: int, message: str) -> None:
    songs = [{"name": f"Song {i}", "artist": "Band"} for i in range(count)]

    response = await client.post("/songs/batch", json=songs)

    assert response.status_code == 422
    assert message in response.json()["detail"]


async def test_a_full_batch_of_1000(client: httpx.AsyncClient) -> None:
    songs = [{"name": f"Song {i}", "artist": "Band", "year": 2000} for i in range(1000)]

    response = await client.post("/songs/batch", json=songs)
    again = await client.post("/songs/batch", json=songs)

    assert response.json()["created"] == 1000
    assert [item["index"] for item in response.json()["items"]] == list(range(1000))
    assert again.json()["duplicates"] == 1000
    assert [item["id"] for item in again.json()["items"]] == [item["id"] for item in response.json()["items"]]
    created = await client.post("/songs", json={"name": "After", "artist": "Band"})
    assert created.status_code == 201
    assert [song["name"] for song in (await client.get("/songs?q=after")).json()] == ["After"]
