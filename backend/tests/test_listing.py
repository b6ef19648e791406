"""GET /songs as a query interface: filters, sorting, keyset paging and counts, on each database."""

import asyncio
from urllib.parse import quote

import httpx
import pytest

from app.db import Database
from tests.factories import make_song
from tests.pages import next_cursor, next_link, walk

CATALOG = [
    # name, artist, year
    ("Yesterday", "The Beatles", 1965),
    ("Help!", "The Beatles", 1965),
    ("Let It Be", "The Beatles", 1970),
    ("Halo", "Beyoncé", 2008),
    ("Crazy in Love", "Beyoncé", 2003),
    ("Bohemian Rhapsody", "Queen", 1975),
    ("Greensleeves", "Traditional", None),
    ("Beat It", "Michael Jackson", 1982),
    ("Respect", "Aretha Franklin", 1967),
]


@pytest.fixture
async def catalog(db: Database) -> dict[str, int]:
    """The catalog above; name -> id."""
    ids = {}
    for name, artist, year in CATALOG:
        song = await make_song(db, name=name, artist=artist, year=year)
        assert song["id"] is not None
        ids[name] = song["id"]
    return ids


async def names(client: httpx.AsyncClient, query: str) -> list[str]:
    response = await client.get(f"/songs?{query}")
    assert response.status_code == 200, response.text
    return [song["name"] for song in response.json()]


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("artist=the%20BEATLES", ["Yesterday", "Help!", "Let It Be"]),
        ("artist=BEYONC%C3%89", ["Halo", "Crazy in Love"]),
        ("artist=Beatles", []),
        ("name=yesterday", ["Yesterday"]),
        ("year=1965", ["Yesterday", "Help!"]),
        ("year_from=1970", ["Let It Be", "Halo", "Crazy in Love", "Bohemian Rhapsody", "Beat It"]),
        ("year_to=1967", ["Yesterday", "Help!", "Respect"]),
        ("year_from=1966&year_to=1975", ["Let It Be", "Bohemian Rhapsody", "Respect"]),
        ("artist=The%20Beatles&year=1970", ["Let It Be"]),
    ],
)
async def test_filters(client: httpx.AsyncClient, query: str, expected: list[str]) -> None:
    assert await names(client, query) == expected


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        (
            "name",
            [
                "Beat It",
                "Bohemian Rhapsody",
                "Crazy in Love",
                "Greensleeves",
                "Halo",
                "Help!",
                "Let It Be",
                "Respect",
                "Yesterday",
            ],
        ),
        (
            "-name",
            [
                "Yesterday",
                "Respect",
                "Let It Be",
                "Help!",
                "Halo",
                "Greensleeves",
                "Crazy in Love",
                "Bohemian Rhapsody",
                "Beat It",
            ],
        ),
        # Songs without a year sort first; ties by id, in the direction of the last key.
        (
            "year",
            [
                "Greensleeves",
                "Yesterday",
                "Help!",
                "Respect",
                "Let It Be",
                "Bohemian Rhapsody",
                "Beat It",
                "Crazy in Love",
                "Halo",
            ],
        ),
        (
            "-year",
            [
                "Halo",
                "Crazy in Love",
                "Beat It",
                "Bohemian Rhapsody",
                "Let It Be",
                "Respect",
                "Help!",
                "Yesterday",
                "Greensleeves",
            ],
        ),
        (
            "artist,-year",
            [
                "Respect",
                "Halo",
                "Crazy in Love",
                "Beat It",
                "Bohemian Rhapsody",
                "Let It Be",
                "Help!",
                "Yesterday",
                "Greensleeves",
            ],
        ),
        (
            "-id",
            [
                "Respect",
                "Beat It",
                "Greensleeves",
                "Bohemian Rhapsody",
                "Crazy in Love",
                "Halo",
                "Let It Be",
                "Help!",
                "Yesterday",
            ],
        ),
        ("created_at", [name for name, _, _ in CATALOG]),
    ],
)
async def test_sort(client: httpx.AsyncClient, sort: str, expected: list[str]) -> None:
    assert await names(client, f"sort={sort}") == expected


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize(
    "sort",
    ["id", "-id", "name", "-name", "year", "-year", "artist,-year", "-artist,name", "created_at", "-created_at,year"],
)
async def test_paging_any_sort_visits_every_song_once_in_order(client: httpx.AsyncClient, sort: str) -> None:
    whole = await names(client, f"sort={sort}&limit=500")

    paged = [song["name"] for song in await walk(client, f"/songs?sort={sort}&limit=2")]

    assert paged == whole
    assert len(paged) == len(CATALOG)


@pytest.mark.usefixtures("catalog")
async def test_paging_keeps_the_filters(client: httpx.AsyncClient) -> None:
    songs = await walk(client, "/songs?artist=the%20beatles&sort=-name&limit=1")

    assert [song["name"] for song in songs] == ["Yesterday", "Let It Be", "Help!"]


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize(
    ("url", "pages"),
    [
        ("/songs?sort=name&limit=3", 3),  # nine songs, three full pages
        ("/songs?artist=the%20beatles&limit=3", 1),
        ("/songs?q=beatles&limit=3", 1),  # relevance, tier by tier
        ("/songs?q=beatles&sort=-name&limit=3", 1),
        ("/artists?sort=-songs&limit=2", 3),  # six artists
        ("/artists?limit=6", 1),
    ],
)
async def test_a_last_page_that_is_exactly_full_has_no_next_link(
    client: httpx.AsyncClient, url: str, pages: int
) -> None:
    visited: list[str] = []
    next_url: str | None = url
    while next_url is not None:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        assert response.json(), f"an empty page after {visited}"
        visited.append(next_url)
        next_url = next_link(response)

    assert len(visited) == pages


async def test_paging_under_concurrent_inserts_visits_every_song_once(client: httpx.AsyncClient, db: Database) -> None:
    for n in range(40):
        await make_song(db, name=f"Before {n:02}", artist=f"Artist {n % 7}", year=1950 + n % 30)
    adding = asyncio.create_task(_add_songs(client, 40))

    seen = [song["id"] for song in await walk(client, "/songs?sort=artist,-year&limit=3")]
    await adding
    final = [song["id"] for song in await walk(client, "/songs?sort=artist,-year&limit=500")]

    assert len(seen) == len(set(seen))
    first_songs = set(final) - {song_id for song_id in final if song_id > 40}
    assert first_songs <= set(seen)
    assert seen == [song_id for song_id in final if song_id in set(seen)]


async def _add_songs(client: httpx.AsyncClient, count: int) -> None:
    for n in range(count):
        response = await client.post("/songs", json={"name": f"During {n:02}", "artist": f"Artist {n % 5}"})
        assert response.status_code == 201
        await asyncio.sleep(0)


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize("count", ["exact", "estimated"])
async def test_total_is_given_only_when_asked(client: httpx.AsyncClient, count: str) -> None:
    plain = await client.get("/songs?limit=2")
    asked = await client.get("/songs?artist=the%20beatles&limit=2", headers={"Prefer": f"count={count}"})

    assert "x-total-count" not in plain.headers
    assert asked.headers["preference-applied"] == f"count={count}"
    total = int(asked.headers["x-total-count"])
    if count == "exact":
        assert total == 3
    else:
        assert total >= 0


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize(
    "headers",
    [
        [("Prefer", "respond-async"), ("Prefer", "count=exact")],  # several lines are one list (RFC 7240)
        [("Prefer", "count=exact; strict")],  # with a parameter
        [("Prefer", 'wait=5, count="exact"')],
    ],
)
async def test_the_count_is_read_from_every_prefer_line(
    client: httpx.AsyncClient, headers: list[tuple[str, str]]
) -> None:
    response = await client.get("/songs?artist=the%20beatles", headers=headers)

    assert response.headers["preference-applied"] == "count=exact"
    assert response.headers["x-total-count"] == "3"
    assert response.headers["vary"] == "Accept, Prefer"  # for caches: the answer depends on them


@pytest.mark.parametrize(
    "query", ["artist=the%20beatles", "name=help", "year=1965", "year_from=1960", "year_to=1970", "q=help"]
)
async def test_an_estimated_count_answers_for_every_filter(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/songs?{query}", headers={"Prefer": "count=estimated"})

    assert response.status_code == 200, response.text
    assert int(response.headers["x-total-count"]) >= 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("sort=genre", "sort"),
        ("sort=name,name", "sort"),
        ("sort=relevance", "sort"),
        ("sort=", "sort"),
        ("cursor=bm9wZQ", "cursor"),
        ("cursor=%%%", "cursor"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("year_from=1990&year_to=1980", "year_from"),
        ("year=1200", "year"),
        ("year=soon", "year"),
        ("q=", "q"),
        ("q=%20%20", "q"),
        ("artist=", "artist"),
    ],
)
async def test_bad_parameter_is_a_422_naming_it(client: httpx.AsyncClient, query: str, field: str) -> None:
    response = await client.get(f"/songs?{query}")

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert [(error["location"], error["field"]) for error in response.json()["errors"]] == [("query", field)]


@pytest.mark.usefixtures("catalog")
async def test_cursor_of_another_sort_is_refused(client: httpx.AsyncClient) -> None:
    cursor = next_cursor(await client.get("/songs?sort=name&limit=2"))

    response = await client.get(f"/songs?sort=year&cursor={cursor}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "cursor_mismatch"


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize(
    ("first", "other"),
    [
        ("artist=the%20beatles", "artist=adele"),
        ("artist=the%20beatles&q=beatles", "artist=adele&q=beatles"),
    ],
)
async def test_cursor_of_other_filters_is_refused(client: httpx.AsyncClient, first: str, other: str) -> None:
    cursor = next_cursor(await client.get(f"/songs?{first}&sort=name&limit=1"))

    response = await client.get(f"/songs?{other}&sort=name&cursor={cursor}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "cursor_mismatch"


async def test_a_cursor_of_an_artist_whose_name_reads_like_a_filter_is_that_artists(
    client: httpx.AsyncClient, db: Database
) -> None:
    for name in ["Help!", "Yesterday"]:
        await make_song(db, name=name, artist="The Beatles&name_key=help")
    cursor = next_cursor(await client.get("/songs?artist=the%20beatles%26name_key%3Dhelp&sort=name&limit=1"))

    response = await client.get(f"/songs?artist=the%20beatles&name=help&sort=name&cursor={cursor}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "cursor_mismatch"


async def test_the_next_page_of_a_long_search_is_served(client: httpx.AsyncClient, db: Database) -> None:
    # 40 words of Hangul, each folded to its letters: a signature of some 1,500 bytes.
    for number in range(3):
        await make_song(db, name=f"답장답장 {number}", artist="Band")
    q = quote(" ".join(["답장답장"] * 40))

    walked = []
    url: str | None = f"/songs?q={q}&limit=2"
    while url is not None:
        page = await client.get(url)
        assert page.status_code == 200, page.text
        walked += [song["name"] for song in page.json()]
        url = next_link(page)

    assert sorted(walked) == [f"답장답장 {number}" for number in range(3)]


async def test_the_next_page_of_the_longest_keys_is_served(client: httpx.AsyncClient, db: Database) -> None:
    # Names and an artist of 200 Hangul syllables, each folded to its letters: the longest sort keys.
    artist = "답" * 200
    for number in range(3):
        await make_song(db, name="답" * 199 + str(number), artist=artist)

    walked = []
    url: str | None = f"/songs?artist={quote(artist)}&sort=name,artist&limit=1"
    while url is not None:
        page = await client.get(url)
        assert page.status_code == 200, page.text
        walked += [song["name"][-1] for song in page.json()]
        url = next_link(page)

    assert walked == ["0", "1", "2"]


@pytest.mark.usefixtures("catalog")
async def test_tampered_cursor_is_refused(client: httpx.AsyncClient) -> None:
    import base64
    import json

    forged = base64.urlsafe_b64encode(json.dumps({"s": "year", "v": ["1970", 3]}).encode()).decode()

    response = await client.get(f"/songs?sort=year&cursor={forged}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize(
    "values",
    [
        ["0001-01-01T00:00:00+14:00", "x", 1],  # a date that cannot be in UTC
        ["2020-01-01T00:00:00+00:00", "x", 2**40],  # an id past 32 bits
        ["2020-01-01T00:00:00+00:00", "x\u0000", 1],  # a NUL
    ],
)
async def test_cursor_values_out_of_range_are_refused(client: httpx.AsyncClient, values: list[object]) -> None:
    import base64
    import json

    sort = "created_at,-name"
    forged = base64.urlsafe_b64encode(json.dumps({"s": sort, "v": values}).encode()).decode()

    response = await client.get(f"/songs?sort={sort}&cursor={forged}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "cursor"


async def test_a_cursor_nested_too_deep_is_refused(client: httpx.AsyncClient) -> None:
    import base64

    forged = base64.urlsafe_b64encode(b"[" * 1100).decode()

    response = await client.get(f"/songs?cursor={forged}")

    assert response.status_code == 422
