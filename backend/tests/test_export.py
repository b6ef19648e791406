"""Export, by command and over HTTP; and the round trip through an empty database."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from app import schema, songs
from app.cli import cli
from app.config import Settings
from app.db import Database
from app.formats import Format, RawRow
from app.main import create_app
from app.models import SongQuery
from tests.catalog import empty, full_rows
from tests.conftest import client_for
from tests.factories import make_song

runner = CliRunner()

CATALOG = "name,artist,year\n" + "".join(
    [
        '"Hello, ""World""",Adele,2015\n',
        "Halo,Beyoncé,2008\n",
        "Drop,Nobody,\n",
        "Crazy in Love,Beyoncé & Jay-Z,2003\n",
        "Jóga,Björk,1997\n",
        "𝐁old,Unicode ☃,2020\n",  # noqa: RUF001 (a mathematical B, on purpose)
    ]
)


def import_catalog(tmp_path: Path) -> None:
    (tmp_path / "catalog.csv").write_text(CATALOG)
    assert runner.invoke(cli, ["import", str(tmp_path / "catalog.csv")]).exit_code == 0
    # A gap in the ids, as a real catalog has: the round trip must keep it.
    assert runner.invoke(cli, ["import", "--dry-run", str(tmp_path / "catalog.csv")]).exit_code == 0


@pytest.mark.parametrize("extension", ["csv", "ndjson"])
def test_export_then_import_into_an_empty_catalog_reproduces_it_exactly(
    catalog: URL, tmp_path: Path, extension: str
) -> None:
    import_catalog(tmp_path)
    runner.invoke(cli, ["import", "--format", "csv", "-"], input="name,artist\nDeleted,Nobody\n")
    before = full_rows(catalog)
    first, second = tmp_path / f"first.{extension}", tmp_path / f"second.{extension}"

    exported = runner.invoke(cli, ["export", "--output", str(first)])
    empty(catalog)
    imported = runner.invoke(cli, ["import", str(first)])
    runner.invoke(cli, ["export", "--output", str(second)])

    assert exported.exit_code == 0, exported.output
    assert f"exported {len(before)} songs" in exported.stderr
    assert imported.exit_code == 0, imported.output
    assert full_rows(catalog) == before
    assert second.read_bytes() == first.read_bytes()


def test_csv_export_to_standard_output_quotes_what_needs_quoting(catalog: URL, tmp_path: Path) -> None:
    import_catalog(tmp_path)

    result = runner.invoke(cli, ["export"])

    lines = result.stdout.splitlines()
    assert lines[0] == "id,name,artist,year,created_at,updated_at"
    assert lines[1].startswith('1,"Hello, ""World""",Adele,2015,')
    assert lines[3].startswith("3,Drop,Nobody,,")
    assert len(lines) == 7


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--year-from", "2000", "--year-to", "1990"], "--year-from: must not be after year_to (1990)"),
        (["--year-from", "200"], "--year-from: Input should be greater than or equal to 1860"),
    ],
)
def test_an_export_the_options_refuse_says_which_and_leaves_no_file(
    catalog: URL, tmp_path: Path, options: list[str], message: str
) -> None:
    output = tmp_path / "songs.csv"

    result = runner.invoke(cli, ["export", "-o", str(output), *options])

    assert result.exit_code == 1
    assert result.stderr.strip() == f"songbook: {message}"
    assert list(tmp_path.iterdir()) == []


def test_ndjson_export_is_filtered_like_the_listing(catalog: URL, tmp_path: Path) -> None:
    import_catalog(tmp_path)

    by_artist = runner.invoke(cli, ["export", "--format", "ndjson", "--artist", "BEYONCÉ"])
    by_years = runner.invoke(cli, ["export", "--format", "ndjson", "--year-from", "2000", "--year-to", "2010"])
    searched = runner.invoke(cli, ["export", "--format", "ndjson", "--q", "beyonce"])

    assert [json.loads(line)["name"] for line in by_artist.stdout.splitlines()] == ["Halo"]
    assert [json.loads(line)["name"] for line in by_years.stdout.splitlines()] == ["Halo", "Crazy in Love"]
    assert [json.loads(line)["name"] for line in searched.stdout.splitlines()] == ["Halo", "Crazy in Love"]


def test_a_bad_filter_or_format_is_a_clear_message(catalog: URL) -> None:
    bad_year = runner.invoke(cli, ["export", "--year", "12"])
    bad_format = runner.invoke(cli, ["export", "--output", "songs.json"])

    assert bad_year.exit_code == 1
    assert "--year: Input should be greater than or equal to 1860" in bad_year.stderr
    assert bad_format.exit_code == 1
    assert "export writes csv or ndjson" in bad_format.stderr


async def test_http_export_streams_every_matching_song(client: httpx.AsyncClient, db: Database) -> None:
    for number in range(12):
        await make_song(db, name=f"Song {number}", artist="Beyoncé" if number % 3 else "Adele")

    csv_response = await client.get("/songs", headers={"Accept": "text/csv"})
    ndjson_response = await client.get("/songs?artist=beyoncé", headers={"Accept": "application/x-ndjson"})

    assert csv_response.status_code == 200
    assert csv_response.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv_response.headers["content-disposition"] == 'attachment; filename="songs.csv"'
    assert csv_response.headers["vary"] == "Accept, Prefer"
    assert len(csv_response.text.splitlines()) == 13  # the header, then all twelve: no paging
    assert ndjson_response.headers["content-type"] == "application/x-ndjson"
    songs = [json.loads(line) for line in ndjson_response.text.splitlines()]
    assert len(songs) == 8
    assert songs[0] == (await client.get(f"/songs/{songs[0]['id']}")).json()


async def test_http_export_is_the_same_as_the_command(
    client: httpx.AsyncClient, db: Database, database_url: URL, tmp_path: Path
) -> None:
    for number in range(3):
        await make_song(db, name=f"Song, {number}", artist="Björk")

    response = await client.get("/songs", headers={"Accept": "application/json;q=0.5, text/csv"})
    exported = await asyncio.to_thread(
        runner.invoke, cli, ["export"], env={"DATABASE_URL": database_url.render_as_string(hide_password=False)}
    )

    assert response.text == exported.stdout
    assert len(response.text.splitlines()) == 4


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        "*/*",
        "text/csv;q=0.2, application/json",
        "text/html",
        "text/csv;q=0.5, application/json;q=0.5",  # a tie: the listing
        "application/x-ndjson, application/json",
    ],
)
async def test_json_stays_the_default(client: httpx.AsyncClient, accept: str) -> None:
    response = await client.get("/songs", headers={"Accept": accept})

    assert response.headers["content-type"] == "application/json"
    assert response.json() == []


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [("text/csv, */*", "text/csv"), ("*/*;q=0.9, application/x-ndjson", "application/x-ndjson")],
)
async def test_an_export_named_is_chosen_over_any_type(client: httpx.AsyncClient, accept: str, media_type: str) -> None:
    response = await client.get("/songs", headers={"Accept": accept})

    assert response.headers["content-type"].split(";")[0] == media_type


@pytest.mark.parametrize("parameter", ["cursor=abc", "limit=10", "sort=name"])
async def test_an_export_refuses_paging(client: httpx.AsyncClient, parameter: str) -> None:
    response = await client.get(f"/songs?{parameter}", headers={"Accept": "text/csv"})

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "an export has every matching song, in id order" in response.json()["detail"]


async def test_an_export_left_early_frees_its_connection(client: httpx.AsyncClient, db: Database) -> None:
    rows = (RawRow(i, {"name": f"Song {i}", "artist": "Band"}) for i in range(20_000))
    await songs.import_songs(db=db, sources=[("test", rows)])
    for _ in range(3):  # more times than... the pool would bear if each left a connection behind
        chunks = songs.export_songs(db=db, query=SongQuery(), file_format=Format.CSV)
        first = await anext(chunks)
        await chunks.aclose()  # a client that went away

        assert first.startswith(b"id,name,artist,year,created_at,updated_at\n1,Song 0,Band,,")
    assert (await client.get("/songs?limit=1")).status_code == 200


@pytest.mark.parametrize("revision", [None, "f0ce4017291c"])  # never migrated; migrated part of the way
async def test_a_database_behind_the_code_is_a_503_that_says_to_migrate(
    empty_database: URL, tmp_path: Path, revision: str | None
) -> None:
    if revision is not None:
        await asyncio.to_thread(schema.upgrade, empty_database, revision)
    url = empty_database.render_as_string(hide_password=False)
    application = create_app(Settings(database_url=url, data_dir=tmp_path, require_write_key=False))
    async with LifespanManager(application), client_for(application, None) as anonymous:
        # What reads only what the old schema had (an export, the artists) is served from it: not these.
        responses = [await anonymous.get(path) for path in ("/songs", "/songs/1", "/songs?q=yesterday")]
        responses.append(await anonymous.post("/songs", json={"name": "Yesterday", "artist": "The Beatles"}))
        if revision is None:
            responses += [
                await anonymous.get("/songs", headers={"Accept": "text/csv"}),
                await anonymous.get("/artists"),
            ]

    assert [response.status_code for response in responses] == [503] * len(responses)
    assert {response.json()["code"] for response in responses} == {"database-not-migrated"}
    assert {response.json()["detail"] for response in responses} == {
        "The database's schema is older than this version of songbook, or was never made; run `songbook migrate`."
    }
    assert not any("retry-after" in response.headers for response in responses)  # a retry would not help
