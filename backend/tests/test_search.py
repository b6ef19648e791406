"""Fuzzy search (`q`): typos, accents and prefixes, ranked, paged, on each database."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from app import replicas
from app.db import Database
from app.search import NearWords
from tests.factories import make_song
from tests.pages import next_link, walk

CATALOG = [
    ("Yesterday", "The Beatles", 1965),
    ("Let It Be", "The Beatles", 1970),
    ("Halo", "Beyoncé", 2008),
    ("Bohemian Rhapsody", "Queen", 1975),
    ("Beat It", "Michael Jackson", 1982),
    ("Respect", "Aretha Franklin", 1967),
    ("Hoppípolla", "Sigur Rós", 2005),
    ("Back in Black", "AC/DC", 1980),
    ("Wonderwall", "Oasis", 1995),
]


@pytest.fixture(autouse=True)
async def catalog(db: Database) -> None:
    for name, artist, year in CATALOG:
        await make_song(db, name=name, artist=artist, year=year)


async def search(client: httpx.AsyncClient, query: str) -> list[tuple[str, str]]:
    response = await client.get(f"/songs?{query}")
    assert response.status_code == 200, response.text
    return [(song["name"], song["artist"]) for song in response.json()]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("beatels", ("Yesterday", "The Beatles")),  # a typo
        ("beyonce", ("Halo", "Beyoncé")),  # without the accent
        ("yesterd", ("Yesterday", "The Beatles")),  # the start of a word
        ("BOHEMIAN rapsody", ("Bohemian Rhapsody", "Queen")),
        ("sigur ros", ("Hoppípolla", "Sigur Rós")),
        ("ac dc", ("Back in Black", "AC/DC")),  # punctuation
        ("wonderwal oasis", ("Wonderwall", "Oasis")),
    ],
)
async def test_search_finds_the_song_and_ranks_its_artist_first(
    client: httpx.AsyncClient, q: str, expected: tuple[str, str]
) -> None:
    found = await search(client, f"q={q}")

    assert expected in found
    assert found[0][1] == expected[1]


async def test_typo_finds_every_song_by_the_artist(client: httpx.AsyncClient) -> None:
    found = await search(client, "q=beatels")

    assert {("Yesterday", "The Beatles"), ("Let It Be", "The Beatles")} <= set(found)


@pytest.mark.parametrize("q", ["zzzzzz", "qwxv"])
async def test_search_without_a_match_is_empty(client: httpx.AsyncClient, q: str) -> None:
    assert await search(client, f"q={q}") == []


async def test_search_combines_with_filters(client: httpx.AsyncClient) -> None:
    assert await search(client, "q=beatels&year=1970") == [("Let It Be", "The Beatles")]


async def test_search_can_be_sorted_by_another_key(client: httpx.AsyncClient) -> None:
    found = await search(client, "q=beatels&sort=-year")

    beatles = [song for song in found if song[1] == "The Beatles"]
    assert beatles == [("Let It Be", "The Beatles"), ("Yesterday", "The Beatles")]


async def test_search_pages_visit_every_match_once_in_rank_order(client: httpx.AsyncClient) -> None:
    whole = await search(client, "q=bea&limit=500")

    paged = await walk(client, "/songs?q=bea&limit=1")

    assert [(song["name"], song["artist"]) for song in paged] == whole
    assert len(whole) >= 2


async def test_search_of_one_or_two_letters_finds_substrings(client: httpx.AsyncClient) -> None:
    found = await search(client, "q=ac")

    assert ("Back in Black", "AC/DC") in found


async def test_a_correction_is_found_however_many_words_start_like_the_query(
    client: httpx.AsyncClient, db: Database
) -> None:
    # "mary" is one edit from "mari"; the 25 artists starting with "mari" must not take its place.
    await make_song(db, name="Proud", artist="Mary")
    for letter in "abcdefghijklmnopqrstuvwxy":
        await make_song(db, name="Song", artist=f"Mari{letter}")

    found = await search(client, "q=mari&limit=500")

    assert ("Proud", "Mary") in found


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("hlao", ("Halo", "Beyoncé")),  # two letters swapped in a short word: few trigrams in common
        ("ahlo", ("Halo", "Beyoncé")),  # the first two, too
        ("queeen", ("Bohemian Rhapsody", "Queen")),
        ("oasi", ("Wonderwall", "Oasis")),
    ],
)
async def test_a_short_word_one_edit_away_is_corrected_on_both_databases(
    client: httpx.AsyncClient, q: str, expected: tuple[str, str]
) -> None:
    assert expected in await search(client, f"q={q}")


async def test_a_search_of_more_words_than_it_can_weigh_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/songs", params={"q": "one two three four five six seven eight zzzzzzzz"})
    repeated = await search(client, "q=" + "+".join(["yesterday"] * 12))

    assert response.status_code == 422
    assert response.json()["detail"] == "Invalid request: q: must have at most 8 different words."
    assert repeated == [("Yesterday", "The Beatles")]


async def test_search_reads_songs_added_and_changed_since(client: httpx.AsyncClient) -> None:
    created = (await client.post("/songs", json={"name": "Paranoid Android", "artist": "Radiohead"})).json()
    await client.patch(f"/songs/{created['id']}", json={"name": "Karma Police"})

    assert await search(client, "q=karma polise") == [("Karma Police", "Radiohead")]
    assert await search(client, "q=paranoid android") == []


async def test_search_forgets_deleted_songs(client: httpx.AsyncClient) -> None:
    song_id = (await client.get("/songs?q=wonderwall")).json()[0]["id"]
    await client.delete(f"/songs/{song_id}")

    assert await search(client, "q=wonderwall") == []


async def test_search_count_is_exact_when_asked(client: httpx.AsyncClient) -> None:
    response = await client.get("/songs?q=beyonce", headers={"Prefer": "count=exact"})

    assert response.headers["x-total-count"] == str(len(response.json()))


@pytest.mark.parametrize("q", ["beatels", "x² ٣٤٥", "ǅungla ⅷ", "𝔘nicode", "İstanbul", "ﬁre"])  # noqa: RUF001
async def test_any_search_with_an_estimated_count_answers(client: httpx.AsyncClient, q: str) -> None:
    response = await client.get("/songs", params={"q": q}, headers={"Prefer": "count=estimated"})

    assert response.status_code == 200
    assert int(response.headers["x-total-count"]) >= 0


async def test_search_pages_under_concurrent_inserts_visit_every_match_once(client: httpx.AsyncClient) -> None:
    for n in range(12):
        await client.post("/songs", json={"name": f"Lonely heart {n}", "artist": f"Band {n % 3}"})

    async def add_more() -> None:
        for n in range(12):
            await client.post("/songs", json={"name": f"Lonely heart later {n}", "artist": "Band 9"})
            await asyncio.sleep(0)

    adding = asyncio.create_task(add_more())
    seen = [song["name"] for song in await walk(client, "/songs?q=lonley%20hart&limit=2")]
    await adding

    assert len(seen) == len(set(seen))
    assert {f"Lonely heart {n}" for n in range(12)} <= set(seen)


async def test_a_search_walk_whose_words_changed_is_told_to_start_again(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    app.state.database.near_words = NearWords(seconds=0)  # a new word is a correction at once
    for n in range(3):
        await client.post("/songs", json={"name": f"Beautifool {n}", "artist": "Someone"})
    first = await client.get("/songs?q=beautifull&limit=1")
    await client.post("/songs", json={"name": "Beautiful", "artist": "Someone Else"})
    second_page = next_link(first)
    assert second_page is not None

    response = await client.get(second_page)

    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "cursor_mismatch"


async def test_a_new_word_corrects_misspellings_once_the_near_words_kept_are_old(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    now = [0.0]
    app.state.database.near_words = NearWords(seconds=10, clock=lambda: now[0])
    await client.post("/songs", json={"name": "Beautifool", "artist": "Someone"})
    assert [song["name"] for song in (await client.get("/songs?q=beautifull")).json()] == ["Beautifool"]
    await client.post("/songs", json={"name": "Beautiful", "artist": "Someone Else"})

    kept = await client.get("/songs?q=beautifull")
    typed_right = await client.get("/songs?q=beautiful")
    now[0] = 10.0
    later = await client.get("/songs?q=beautifull")

    assert [song["name"] for song in kept.json()] == ["Beautifool"]
    assert typed_right.json()[0]["name"] == "Beautiful"  # the words a query word starts are never kept
    assert [song["name"] for song in later.json()] == ["Beautiful", "Beautifool"]


async def test_near_words_searched_again_late_in_their_time_are_looked_up_anew_in_the_background(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    now = [0.0]
    near_words = app.state.database.near_words = NearWords(seconds=10, clock=lambda: now[0])
    await client.post("/songs", json={"name": "Beautifool", "artist": "Someone"})
    await client.get("/songs?q=beautifull")
    await client.post("/songs", json={"name": "Beautiful", "artist": "Someone Else"})

    now[0] = 7.9
    early = await client.get("/songs?q=beautifull")
    await near_words.settle()
    now[0] = 8.0
    late = await client.get("/songs?q=beautifull")  # answered from what is kept; the look-up starts
    await near_words.settle()
    refreshed = await client.get("/songs?q=beautifull")
    now[0] = 17.9
    still_kept = near_words.get("beautifull")

    assert [song["name"] for song in early.json()] == ["Beautifool"]
    assert [song["name"] for song in late.json()] == ["Beautifool"]
    assert [song["name"] for song in refreshed.json()] == ["Beautiful", "Beautifool"]
    assert still_kept is not None  # kept from 8.0: not expired at 10
    assert "beautiful" in dict(still_kept)


async def test_one_look_up_at_a_time_in_the_background_reading_where_a_get_reads() -> None:
    now = [0.0]
    near_words = NearWords(seconds=10, clock=lambda: now[0])
    for word in ("first", "second"):
        near_words.keep(word, [])
    started, release = asyncio.Event(), asyncio.Event()
    looked_up: list[tuple[list[str], bool]] = []

    async def look_up(words: list[str]) -> None:
        routing = replicas._current.get()
        looked_up.append((words, routing is not None and routing.to_replica))
        started.set()
        await release.wait()

    now[0] = 8.0
    near_words.refresh(["first"], look_up)
    await started.wait()
    near_words.refresh(["second"], look_up)  # while the first runs: left to a later search
    release.set()
    await near_words.settle()

    assert looked_up == [(["first"], True)]
