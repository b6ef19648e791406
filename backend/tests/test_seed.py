"""Synthetic songs: `songbook seed`."""

from sqlalchemy.engine import URL
from typer.testing import CliRunner

from app.cli import cli
from app.models import SongCreate
from app.seed import generate_songs
from tests.catalog import rows, search

runner = CliRunner()


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


def test_seed_adds_songs_that_are_listed_and_searchable(catalog: URL) -> None:
    result = runner.invoke(cli, ["seed", "--count", "300"])
    again = runner.invoke(cli, ["seed", "--count", "300"])

    assert result.exit_code == 0, result.output
    assert "added 300 songs" in result.stdout
    assert "added 0 songs" in again.stdout
    assert "(300 were there already)" in again.stdout
    songs = rows(catalog)
    assert len(songs) == 300
    beatles = [song_id for song_id, _, artist, _ in songs if artist == "The Beatles"]
    assert beatles
    assert set(beatles) <= set(search(catalog, "beatles"))
