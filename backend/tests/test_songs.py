"""The /songs routes, end to end through the ASGI app, on each database."""

from datetime import UTC, datetime

import httpx
import pytest
from pydantic import TypeAdapter
from sqlalchemy import update
from sqlmodel import col, select

from app import songs
from app.db import Database
from app.fields import ID_MAX
from app.formats import RawRow
from app.models import Song, SongPublic
from tests.factories import make_song
from tests.pages import next_link


async def test_create_answers_201_with_the_song_and_its_location(client: httpx.AsyncClient) -> None:
    response = await client.post("/songs", json={"name": "  Yesterday ", "artist": "The Beatles", "year": 1965})

    assert response.status_code == 201
    song = response.json()
    assert response.headers["location"] == f"/songs/{song['id']}"
    assert {k: song[k] for k in ("name", "artist", "year")} == {
        "name": "Yesterday",
        "artist": "The Beatles",
        "year": 1965,
    }
    created_at = datetime.fromisoformat(song["created_at"])
    assert created_at.utcoffset() is not None
    assert song["updated_at"] == song["created_at"]


async def test_created_song_reads_back_identical(client: httpx.AsyncClient) -> None:
    created = (await client.post("/songs", json={"name": "Halo", "artist": "Beyoncé"})).json()

    response = await client.get(created["id"] and f"/songs/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created


async def test_year_is_optional(client: httpx.AsyncClient) -> None:
    response = await client.post("/songs", json={"name": "Greensleeves", "artist": "Traditional"})

    assert response.status_code == 201
    assert response.json()["year"] is None


async def test_the_same_song_ignoring_case_and_spaces_is_a_409_naming_the_existing_id(
    client: httpx.AsyncClient, db: Database
) -> None:
    existing = await make_song(db, name="Crazy in Love", artist="Beyoncé")

    response = await client.post("/songs", json={"name": " CRAZY IN LOVE", "artist": "BEYONCÉ "})

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "duplicate-song"
    assert response.json()["existing_id"] == existing["id"]


async def test_same_name_by_another_artist_is_another_song(client: httpx.AsyncClient, db: Database) -> None:
    await make_song(db, name="Yesterday", artist="The Beatles")

    response = await client.post("/songs", json={"name": "Yesterday", "artist": "Leona Lewis"})

    assert response.status_code == 201


async def test_get_an_unknown_id_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/songs/4242")

    assert response.status_code == 404
    assert response.json()["code"] == "not-found"
    assert "4242" in response.json()["detail"]


async def test_list_is_a_json_array_in_id_order(client: httpx.AsyncClient, db: Database) -> None:
    ids = [(await make_song(db, name=f"Song {n}"))["id"] for n in range(3)]

    response = await client.get("/songs")

    assert response.status_code == 200
    assert [song["id"] for song in response.json()] == ids
    assert next_link(response) is None


async def test_pages_visit_every_song_exactly_once(client: httpx.AsyncClient, db: Database) -> None:
    ids = [(await make_song(db, name=f"Song {n}"))["id"] for n in range(7)]
    seen: list[int] = []
    url: str | None = "/songs?limit=3"
    pages = 0

    while url:
        response = await client.get(url)
        assert response.status_code == 200
        seen += [song["id"] for song in response.json()]
        url = next_link(response)
        pages += 1

    assert seen == ids
    assert pages == 3


async def test_page_walk_sees_songs_added_after_it_started(client: httpx.AsyncClient, db: Database) -> None:
    ids = [(await make_song(db, name=f"Song {n}"))["id"] for n in range(3)]
    response = await client.get("/songs?limit=2")
    added = await make_song(db, name="Added later")

    next_page = await client.get(next_link(response) or "")

    assert [song["id"] for song in response.json()] == ids[:2]
    assert [song["id"] for song in next_page.json()] == [ids[2], added["id"]]


async def test_limit_defaults_to_50(client: httpx.AsyncClient, db: Database) -> None:
    for n in range(51):
        await make_song(db, name=f"Song {n}")

    response = await client.get("/songs")

    assert len(response.json()) == 50
    assert next_link(response) is not None


async def test_patch_changes_only_the_fields_given(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db, name="Yesterday", artist="The Beatles", year=1965)

    response = await client.patch(f"/songs/{song['id']}", json={"year": 1966})

    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["artist"], body["year"]) == ("Yesterday", "The Beatles", 1966)
    assert body["created_at"] == (await client.get(f"/songs/{song['id']}")).json()["created_at"]
    assert datetime.fromisoformat(body["updated_at"]) > datetime.fromisoformat(body["created_at"])


async def test_patch_with_null_year_clears_it(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db, year=1965)

    response = await client.patch(f"/songs/{song['id']}", json={"year": None})

    assert response.json()["year"] is None
    assert (await client.get(f"/songs/{song['id']}")).json()["year"] is None


async def test_patch_that_makes_a_duplicate_is_a_409(client: httpx.AsyncClient, db: Database) -> None:
    existing = await make_song(db, name="Help!", artist="The Beatles")
    song = await make_song(db, name="Help", artist="The Beatles")

    response = await client.patch(f"/songs/{song['id']}", json={"name": "HELP!"})

    assert response.status_code == 409
    assert response.json()["existing_id"] == existing["id"]
    assert (await client.get(f"/songs/{song['id']}")).json()["name"] == "Help"


async def test_a_write_whose_duplicate_went_just_after_is_made_again_not_a_500(
    client: httpx.AsyncClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each write collides with a song that another request deletes just after, before the
    # write can look it up: the write goes through on its next try.
    taken = await make_song(db, name="Help!", artist="The Beatles")
    other = await make_song(db, name="Yesterday", artist="The Beatles")
    look_up = songs._raise_if_duplicate

    async def deleted_meanwhile(db: Database, *, name_key: str, artist_key: str) -> None:
        await songs.delete_song(db=db, song_id=(await look_up_id(db, name_key, artist_key)))
        await look_up(db, name_key=name_key, artist_key=artist_key)

    monkeypatch.setattr(songs, "_raise_if_duplicate", deleted_meanwhile)

    created = await client.post("/songs", json={"name": "Help!", "artist": "The Beatles"})
    renamed = await client.patch(f"/songs/{other['id']}", json={"name": "Help!"})

    assert created.status_code == 201, created.text
    assert created.json()["id"] != taken["id"]
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Help!"


async def look_up_id(db: Database, name_key: str, artist_key: str) -> int:
    found = await db.fetch(songs._FIND_SONG_ID, {"name_key": name_key, "artist_key": artist_key})
    return int(found[0]["id"])


async def test_patch_renaming_a_song_keeps_its_uniqueness_key(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db, name="Yesterdy", artist="The Beatles")
    await client.patch(f"/songs/{song['id']}", json={"name": "Yesterday"})

    response = await client.post("/songs", json={"name": "yesterday", "artist": "the beatles"})

    assert response.status_code == 409
    assert response.json()["existing_id"] == song["id"]


async def test_patch_an_unknown_id_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.patch("/songs/4242", json={"year": 1999})

    assert response.status_code == 404


async def test_delete_answers_204_and_the_song_is_gone(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db)

    response = await client.delete(f"/songs/{song['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers
    assert (await client.get(f"/songs/{song['id']}")).status_code == 404


async def test_delete_an_unknown_id_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.delete("/songs/4242")

    assert response.status_code == 404


async def test_ids_of_deleted_songs_are_not_reused(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db)
    await client.delete(f"/songs/{song['id']}")

    response = await client.post("/songs", json={"name": "Something", "artist": "The Beatles"})

    assert song["id"] is not None
    assert response.json()["id"] > song["id"]


async def test_songs_are_written_byte_for_byte_as_pydantic_writes_song_public(
    client: httpx.AsyncClient, db: Database
) -> None:
    # The hot routes write the database's rows with orjson, unvalidated: as the response model would.
    created = await client.post("/songs", json={"name": "Ça plane pour moi", "artist": "Plastic Bertrand"})
    whole_second = await make_song(db, name="Zero", artist="Microseconds", year=None)
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with db.transaction(write=True) as transaction:
        changed = update(Song).where(col(Song.id) == whole_second["id"]).values(created_at=stamp, updated_at=stamp)
        await transaction.fetch(changed)

    async with db.transaction() as transaction:
        songs = (await transaction.session.exec(select(Song).order_by(col(Song.id)))).all()
    for song in songs:
        expected = SongPublic.model_validate(song, from_attributes=True).model_dump_json().encode()
        assert (await client.get(f"/songs/{song.id}")).content == expected
    listed = await client.get("/songs", params={"sort": "id"})
    assert listed.content == TypeAdapter(list[SongPublic]).dump_json(
        [SongPublic.model_validate(song, from_attributes=True) for song in songs]
    )
    assert created.content == (await client.get(f"/songs/{created.json()['id']}")).content


@pytest.mark.parametrize("name", ["Song IDs Used Up", "song ids used up"])
async def test_a_duplicate_named_like_the_ids_error_is_a_duplicate(client: httpx.AsyncClient, name: str) -> None:
    first = await client.post("/songs", json={"name": name, "artist": "Band"})

    again = await client.post("/songs", json={"name": name, "artist": "Band"})

    assert again.status_code == 409
    assert again.json()["code"] == "duplicate-song"
    assert again.json()["existing_id"] == first.json()["id"]


@pytest.fixture
async def last_id_taken(db: Database) -> None:
    """A song with the largest id a song may have, brought by an import."""
    rows = [RawRow(1, {"id": ID_MAX, "name": "The Last", "artist": "Brought"})]
    await songs.import_songs(db=db, sources=[("songs.ndjson", rows)])


@pytest.mark.usefixtures("last_id_taken")
@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/songs", {"name": "One More", "artist": "Band"}, {}),
        ("/songs", {"name": "One More", "artist": "Band"}, {"Idempotency-Key": "one-more"}),
        ("/songs/batch", [{"name": "One More", "artist": "Band"}], {}),
    ],
)
async def test_a_create_past_the_last_id_is_a_409_that_writes_nothing(
    client: httpx.AsyncClient, path: str, body: object, headers: dict[str, str]
) -> None:
    for _ in range(2):  # and again: nothing was kept of the first
        response = await client.post(path, json=body, headers=headers)

        assert response.status_code == 409, response.text
        assert response.json()["code"] == "ids-used-up"
        assert "2,147,483,647" in response.json()["detail"]

    listed = await client.get("/songs")
    assert [song["id"] for song in listed.json()] == [ID_MAX]
