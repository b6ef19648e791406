"""Versions and ETags: conditional reads, and writes that never overwrite a change unseen."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from app.db import Database
from tests.factories import make_song


async def test_a_song_carries_its_version_as_a_strong_etag(client: httpx.AsyncClient) -> None:
    created = await client.post("/songs", json={"name": "Halo", "artist": "Beyoncé"})
    song_id = created.json()["id"]

    read = await client.get(f"/songs/{song_id}")
    changed = await client.patch(f"/songs/{song_id}", json={"year": 2008})

    assert created.headers["etag"] == '"1"'
    assert read.headers["etag"] == '"1"'
    assert changed.headers["etag"] == '"2"'
    assert (await client.get(f"/songs/{song_id}")).headers["etag"] == '"2"'


async def test_if_none_match_answers_304_while_the_song_is_unchanged(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db)

    unchanged = await client.get(f"/songs/{song['id']}", headers={"If-None-Match": '"1"'})
    await client.patch(f"/songs/{song['id']}", json={"year": 1966})
    changed = await client.get(f"/songs/{song['id']}", headers={"If-None-Match": 'W/"1"'})

    assert unchanged.status_code == 304
    assert unchanged.headers["etag"] == '"1"'
    assert unchanged.content == b""
    assert changed.status_code == 200
    assert changed.json()["year"] == 1966


@pytest.mark.parametrize("method", ["PATCH", "PUT", "DELETE"])
async def test_a_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient, db: Database, method: str
) -> None:
    song = await make_song(db, name="Yesterday", year=1965)
    await client.patch(f"/songs/{song['id']}", json={"year": 1966})  # now at version 2
    body = {"name": "Yesterday", "artist": "The Beatles", "year": 1967} if method != "DELETE" else None

    response = await client.request(method, f"/songs/{song['id']}", json=body, headers={"If-Match": '"1"'})

    assert response.status_code == 412
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "precondition-failed"
    assert response.headers["etag"] == '"2"'
    assert (await client.get(f"/songs/{song['id']}")).json()["year"] == 1966


@pytest.mark.parametrize("if_match", ['"1"', '"7", "1"', "*"])
async def test_a_current_if_match_lets_the_write_through(
    client: httpx.AsyncClient, db: Database, if_match: str
) -> None:
    song = await make_song(db)

    response = await client.patch(f"/songs/{song['id']}", json={"year": 1970}, headers={"If-Match": if_match})

    assert response.status_code == 200
    assert response.json()["year"] == 1970


@pytest.mark.parametrize("if_match", ['W/"1"', "1", '"one"', '""', '"²"', '"99999999999999999999"'])
async def test_a_weak_or_foreign_tag_never_matches(client: httpx.AsyncClient, db: Database, if_match: str) -> None:
    song = await make_song(db)

    response = await client.delete(f"/songs/{song['id']}", headers={b"If-Match": if_match.encode("latin-1")})

    assert response.status_code == 412
    assert (await client.get(f"/songs/{song['id']}")).status_code == 200


async def test_a_precondition_on_a_missing_song_is_404(client: httpx.AsyncClient) -> None:
    response = await client.patch("/songs/99", json={"year": 1970}, headers={"If-Match": '"1"'})

    assert response.status_code == 404


async def test_put_replaces_every_field(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db, name="Yesterday", artist="The Beatles", year=1965)

    response = await client.put(
        f"/songs/{song['id']}", json={"name": "Yesterday (Remastered)", "artist": "The Beatles"}
    )

    assert response.status_code == 200
    assert response.json()["name"] == "Yesterday (Remastered)"
    assert response.json()["year"] is None
    assert response.headers["etag"] == '"2"'
    assert (await client.put(f"/songs/{song['id']}", json={"name": "X"})).status_code == 422


async def test_the_setting_can_require_if_match_on_writes(
    app: FastAPI, client: httpx.AsyncClient, db: Database
) -> None:
    song = await make_song(db)
    app.state.settings.require_if_match = True

    refused = await client.patch(f"/songs/{song['id']}", json={"year": 1970})
    deleted = await client.delete(f"/songs/{song['id']}", headers={"If-Match": '"1"'})

    assert refused.status_code == 428
    assert refused.json()["code"] == "precondition-required"
    assert deleted.status_code == 204


async def test_concurrent_editors_lose_no_update(app: FastAPI, client: httpx.AsyncClient, db: Database) -> None:
    app.state.settings.rate_limit_per_second = 0  # the retries on conflict are many
    song = await make_song(db, year=1900)
    editors, increments = 8, 5

    async def editor() -> int:
        conflicts = 0
        for _ in range(increments):
            while True:  # read, change, write if unchanged since; else read again
                read = await client.get(f"/songs/{song['id']}")
                written = await client.patch(
                    f"/songs/{song['id']}",
                    json={"year": read.json()["year"] + 1},
                    headers={"If-Match": read.headers["etag"]},
                )
                if written.status_code == 200:
                    break
                assert written.status_code == 412
                conflicts += 1
        return conflicts

    await asyncio.gather(*(editor() for _ in range(editors)))

    final = await client.get(f"/songs/{song['id']}")
    assert final.json()["year"] == 1900 + editors * increments
    assert final.headers["etag"] == f'"{1 + editors * increments}"'


async def test_concurrent_writes_to_one_version_let_exactly_one_through(
    client: httpx.AsyncClient, db: Database
) -> None:
    song = await make_song(db, year=1900)

    responses = await asyncio.gather(
        *(client.patch(f"/songs/{song['id']}", json={"year": 1901 + i}, headers={"If-Match": '"1"'}) for i in range(10))
    )

    assert sorted(response.status_code for response in responses) == [200] + [412] * 9


async def test_concurrent_creates_of_one_song_make_one_row(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(client.post("/songs", json={"name": "Creep", "artist": "Radiohead"}) for _ in range(10))
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 9
    created = next(response for response in responses if response.status_code == 201).json()["id"]
    assert {response.json()["existing_id"] for response in responses if response.status_code == 409} == {created}
    assert len((await client.get("/songs")).json()) == 1


@pytest.mark.parametrize("if_match", ['"01"', '"0001"', '" 1"'])
async def test_if_match_compares_the_tags_not_the_numbers_they_read_as(
    client: httpx.AsyncClient, db: Database, if_match: str
) -> None:
    song = await make_song(db)

    response = await client.patch(f"/songs/{song['id']}", json={"year": 1966}, headers={"If-Match": if_match})

    assert response.status_code == 412
    assert (await client.get(f"/songs/{song['id']}")).headers["etag"] == '"1"'


async def test_conditions_on_several_header_lines_are_one_list(client: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db)
    url = f"/songs/{song['id']}"

    read = await client.get(url, headers=[("If-None-Match", '"7"'), ("If-None-Match", '"1"')])
    written = await client.patch(url, json={"year": 1966}, headers=[("If-Match", '"7"'), ("If-Match", '"1"')])

    assert read.status_code == 304
    assert (written.status_code, written.headers["etag"]) == (200, '"2"')


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {"If-Match": '"7"'}),
        ("PUT", {"If-None-Match": "*"}),
        ("PATCH", {"If-None-Match": '"1"'}),
        ("PATCH", {"If-None-Match": 'W/"1"'}),
        ("DELETE", {"If-None-Match": '"7", "1"'}),
        ("PATCH", {"If-Match": '"1"', "If-None-Match": "*"}),
    ],
)
async def test_a_condition_that_is_false_is_412_and_changes_nothing(
    client: httpx.AsyncClient, db: Database, method: str, headers: dict[str, str]
) -> None:
    song = await make_song(db, name="Yesterday", year=1965)
    body = {"name": "Yesterday", "artist": "The Beatles", "year": 1967} if method in ("PUT", "PATCH") else None

    response = await client.request(method, f"/songs/{song['id']}", json=body, headers=headers)

    assert response.status_code == 412
    assert response.json()["code"] == "precondition-failed"
    assert response.headers["etag"] == '"1"'
    # The song did not change: the detail says which condition failed, not that it did.
    assert response.json()["detail"].startswith(f'Song {song["id"]} is at ETag "1": the request\'s If-Match')
    assert "changed" not in response.json()["detail"]
    assert (await client.get(f"/songs/{song['id']}")).json()["year"] == 1965


@pytest.mark.parametrize(
    ("method", "headers"),
    [("GET", {"If-Match": '"7", "1"'}), ("PATCH", {"If-None-Match": '"7"'}), ("DELETE", {"If-None-Match": '"2"'})],
)
async def test_a_condition_that_is_true_lets_the_request_through(
    client: httpx.AsyncClient, db: Database, method: str, headers: dict[str, str]
) -> None:
    song = await make_song(db)
    body = {"year": 1967} if method == "PATCH" else None

    response = await client.request(method, f"/songs/{song['id']}", json=body, headers=headers)

    assert response.status_code == {"GET": 200, "PATCH": 200, "DELETE": 204}[method]


async def test_if_none_match_star_on_a_song_not_there_is_404(client: httpx.AsyncClient) -> None:
    body = {"name": "Yesterday", "artist": "The Beatles"}

    response = await client.put("/songs/999999", json=body, headers={"If-None-Match": "*"})

    assert response.status_code == 404
