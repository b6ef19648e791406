"""GET /artists: the artists with their song counts, paged, sorted and filtered by prefix."""

import httpx
import pytest

from app.db import Database
from tests.factories import make_song
from tests.pages import next_cursor, walk


@pytest.fixture(autouse=True)
async def catalog(db: Database) -> None:
    songs = {"The Beatles": 3, "Beyoncé": 2, "Queen": 1, "beatles tribute band": 2, "ABBA": 1}
    for artist, count in songs.items():
        for n in range(count):
            await make_song(db, name=f"{artist} song {n}", artist=artist)


async def artists(client: httpx.AsyncClient, query: str = "") -> list[tuple[str, int]]:
    response = await client.get(f"/artists?{query}")
    assert response.status_code == 200, response.text
    return [(artist["name"], artist["songs"]) for artist in response.json()]


async def test_artists_by_name_with_their_song_counts(client: httpx.AsyncClient) -> None:
    assert await artists(client) == [
        ("ABBA", 1),
        ("beatles tribute band", 2),
        ("Beyoncé", 2),
        ("Queen", 1),
        ("The Beatles", 3),
    ]


async def test_artists_by_most_songs(client: httpx.AsyncClient) -> None:
    assert await artists(client, "sort=-songs") == [
        ("The Beatles", 3),
        ("Beyoncé", 2),
        ("beatles tribute band", 2),
        ("Queen", 1),
        ("ABBA", 1),
    ]


async def test_artists_by_prefix_ignoring_case(client: httpx.AsyncClient) -> None:
    assert await artists(client, "prefix=BE") == [("beatles tribute band", 2), ("Beyoncé", 2), ("The Beatles", 3)]


@pytest.mark.parametrize(
    ("prefix", "found"),
    [
        ("bea", ["beatles tribute band", "The Beatles"]),  # a word of the name starts with it
        ("the bea", ["The Beatles"]),
        ("tribute", ["beatles tribute band"]),
        ("beyonce", ["Beyoncé"]),  # accents aside, as search does
        ("eatles", []),  # inside a word: no
    ],
)
async def test_a_prefix_finds_the_artists_with_a_word_starting_so(
    client: httpx.AsyncClient, prefix: str, found: list[str]
) -> None:
    assert [name for name, _ in await artists(client, f"prefix={prefix}")] == found


@pytest.mark.parametrize("sort", ["name", "-name", "songs", "-songs"])
async def test_artist_pages_visit_each_artist_once(client: httpx.AsyncClient, sort: str) -> None:
    whole = await artists(client, f"sort={sort}")

    paged = await walk(client, f"/artists?sort={sort}&limit=2")

    assert [(artist["name"], artist["songs"]) for artist in paged] == whole


async def test_an_artist_cursor_of_another_prefix_is_refused(client: httpx.AsyncClient) -> None:
    cursor = next_cursor(await client.get("/artists?prefix=b&limit=1"))

    response = await client.get(f"/artists?prefix=the&cursor={cursor}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "cursor_mismatch"


async def test_a_sort_is_read_trimmed_as_on_songs(client: httpx.AsyncClient) -> None:
    assert await artists(client, "sort=%20-songs%20") == await artists(client, "sort=-songs")


async def test_an_artists_songs_are_a_filter_away(client: httpx.AsyncClient) -> None:
    response = await client.get("/songs?artist=the%20beatles")

    assert [song["name"] for song in response.json()] == [f"The Beatles song {n}" for n in range(3)]


@pytest.mark.parametrize("query", ["sort=popularity", "sort=", "limit=0", "cursor=abc", "prefix="])
async def test_bad_parameter_is_a_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/artists?{query}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == query.split("=")[0]
