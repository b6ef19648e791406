"""What the API accepts as a song, and the precise reason it gives when it refuses one."""

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.db import Database
from tests.factories import make_song

NEXT_YEAR = datetime.now(UTC).year + 1

INVALID_SONGS = [
    pytest.param({"name": "", "artist": "A"}, "name", "string_too_short", id="empty name"),
    pytest.param({"name": " \t\n ", "artist": "A"}, "name", "string_too_short", id="whitespace-only name"),
    pytest.param({"name": "A", "artist": "x" * 201}, "artist", "string_too_long", id="artist over 200"),
    pytest.param({"name": "Bad\x00Name", "artist": "A"}, "name", "control_characters", id="NUL"),
    pytest.param({"name": "Bad\x1bName", "artist": "A"}, "name", "control_characters", id="escape"),
    pytest.param({"name": "A", "artist": "Bad\x7f"}, "artist", "control_characters", id="DEL"),
    pytest.param({"name": "A", "artist": "Ba\x85d"}, "artist", "control_characters", id="C1 control"),
    pytest.param({"name": "Line\nbreak", "artist": "A"}, "name", "control_characters", id="inner newline"),
    pytest.param({"name": "Line\u2028break", "artist": "A"}, "name", "control_characters", id="line separator"),
    pytest.param({"name": "\u200b\u200b", "artist": "A"}, "name", "invisible", id="zero-width spaces only"),
    pytest.param({"name": "A", "artist": "\u00ad\u2060"}, "artist", "invisible", id="soft hyphen, word joiner"),
    pytest.param({"name": "\u3164", "artist": "A"}, "name", "invisible", id="Hangul filler"),
    pytest.param({"name": "\u2800\u2800", "artist": "A"}, "name", "invisible", id="Braille blanks"),
    pytest.param({"name": "\ufe0f\u034f", "artist": "A"}, "name", "invisible", id="variation selector, joiner"),
    pytest.param({"name": 7, "artist": "A"}, "name", "string_type", id="number for name"),
    pytest.param({"name": None, "artist": "A"}, "name", "string_type", id="null name"),
    pytest.param({"artist": "A"}, "name", "missing", id="missing name"),
    pytest.param({"name": "A", "artist": "A", "year": 1859}, "year", "greater_than_equal", id="year too old"),
    pytest.param({"name": "A", "artist": "A", "year": NEXT_YEAR + 1}, "year", "year_in_future", id="future year"),
    pytest.param({"name": "A", "artist": "A", "year": "1999"}, "year", "int_type", id="year as string"),
    pytest.param({"name": "A", "artist": "A", "year": 1999.5}, "year", "int_type", id="fractional year"),
    pytest.param({"name": "A", "artist": "A", "year": True}, "year", "int_type", id="boolean year"),
    pytest.param({"name": "A", "artist": "A", "genre": "pop"}, "genre", "extra_forbidden", id="unknown field"),
    pytest.param({"name": "A", "artist": "A", "id": 5}, "id", "extra_forbidden", id="client-chosen id"),
    pytest.param(
        {"name": "A", "artist": "A", "created_at": "2020-01-01T00:00:00Z"},
        "created_at",
        "extra_forbidden",
        id="client-set timestamp",
    ),
]


@pytest.mark.parametrize(("body", "field", "error_type"), INVALID_SONGS)
async def test_invalid_song_is_a_422_naming_the_field_and_reason(
    client: httpx.AsyncClient, body: dict[str, Any], field: str, error_type: str
) -> None:
    response = await client.post("/songs", json=body)

    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation-failed"
    assert [(error["location"], error["field"], error["type"]) for error in problem["errors"]] == [
        ("body", field, error_type)
    ]
    assert field in problem["detail"]
    assert (await client.get("/songs")).json() == []


async def test_invalid_patch_is_a_422_and_changes_nothing(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db, name="Yesterday")

    response = await client.patch(f"/songs/{song['id']}", json={"name": "  ", "year": 1965})

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["name"]
    assert (await client.get(f"/songs/{song['id']}")).json()["name"] == "Yesterday"


async def test_patch_cannot_null_a_name(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db)

    response = await client.patch(f"/songs/{song['id']}", json={"name": None})

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "name"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"name": "x" * 200, "artist": "y" * 200}, id="200 characters"),
        pytest.param({"name": "  " + "x" * 200 + "  ", "artist": "y"}, id="200 once trimmed"),
        pytest.param({"name": "日本語の歌 🎵", "artist": "Ünïcødé"}, id="unicode"),
        pytest.param({"name": "Tab\u200bFree", "artist": "A", "year": 1860}, id="format character, oldest year"),
        pytest.param({"name": "A", "artist": "A", "year": NEXT_YEAR}, id="next year"),
        pytest.param({"name": "\u2764\ufe0f", "artist": "\u2800A"}, id="an emoji's selector, a blank beside a letter"),
    ],
)
async def test_valid_song_is_stored_as_sent_but_trimmed(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post("/songs", json=body)

    assert response.status_code == 201
    stored = (await client.get(response.headers["location"])).json()
    assert (stored["name"], stored["artist"], stored["year"]) == (
        body["name"].strip(),
        body["artist"].strip(),
        body.get("year"),
    )


async def test_a_name_that_grows_when_normalised_is_measured_after(client: httpx.AsyncClient) -> None:
    # U+FB2C is three characters in NFC: 200 of them are 600.
    response = await client.post("/songs", json={"name": "\ufb2c" * 200, "artist": "A"})

    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "string_too_long"


async def test_search_text_refuses_control_characters(client: httpx.AsyncClient) -> None:
    songs = await client.get("/songs", params={"q": "a\u0000b"})
    artists = await client.get("/artists", params={"prefix": "a\u0000"})

    assert (songs.status_code, artists.status_code) == (422, 422)
