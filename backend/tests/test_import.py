"""`songbook import`: files in, every row accounted for, all or nothing."""

import asyncio
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner, Result

from app.checking import ArtistTexts
from app.cli import cli
from app.folding import search_fold, song_key
from app.formats import Format, read_rows
from app.importing import BATCH_SIZE, DECIDE_PASSES, Import
from tests.catalog import alter, query, rows, search, song_table

runner = CliRunner()


def rejections(result: Result) -> list[str]:
    """The lines of the output that report a rejected row: file:line: reason."""
    return [line for line in result.stderr.splitlines() if re.match(r".+:\d+: ", line)]


def write(path: Path, content: str | bytes) -> str:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def test_csv_with_bom_quotes_commas_and_extra_columns(catalog: URL, tmp_path: Path) -> None:
    songs = write(
        tmp_path / "songs.csv",
        "\ufeffName,artist,year,album\n"
        '"Hello, ""World""",Adele,2015,25\n'
        "Halo,Beyoncé,,I Am...\n"
        '"Earth, Wind & Fire",September,1978,\n',
    )

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 0, result.output
    assert "3 songs were added, 0 updated, 0 skipped as already there, 0 rejected" in result.stdout
    assert rows(catalog) == [
        (1, 'Hello, "World"', "Adele", 2015),
        (2, "Halo", "Beyoncé", None),
        (3, "Earth, Wind & Fire", "September", 1978),
    ]
    assert search(catalog, "beyonce") == [2]


@pytest.mark.parametrize(
    ("year", "read"),
    [
        ("2015", 2015),
        (" 2015 ", 2015),
        ("+2015", 2015),
        ("-5", -5),
        ("", None),
        ("  ", None),
        ("2147483648", 2147483648),
        ("12345678901", "12345678901"),  # more digits than an id can have: left as text, rejected as such
        ("\u0663", "\u0663"),  # a digit, but not an ASCII one
        ("19x5", "19x5"),
    ],
)
def test_csv_numbers_are_read_as_numbers_and_blanks_as_no_value(year: str, read: object) -> None:
    stream = io.BytesIO(f"name,artist,year,id\nA,B,{year},{year}\n".encode())

    [row] = read_rows(stream, Format.CSV)

    assert row.fields == {"name": "A", "artist": "B", "year": read, "id": read}


def test_artist_texts_keep_what_fits_their_room_and_derive_the_rest() -> None:
    texts = ArtistTexts(room=20)

    assert texts["Björk"] == (song_key("Björk"), search_fold("Björk"))
    assert texts["Sigur Rós"] == (song_key("Sigur Rós"), search_fold("Sigur Rós"))

    assert list(texts) == ["Björk"]  # 5 characters, its key 5 and its search text 5; the second needs 27
    assert texts.room == 5


def test_each_rejected_row_is_named_with_file_line_and_reason(catalog: URL, tmp_path: Path) -> None:
    songs = write(
        tmp_path / "songs.csv",
        b"name,artist,year\n"
        b'"Two\nlines",Adele,2015\n'  # lines 2-3: a quoted newline, a control character
        b"Fine,Adele,2015\n"
        b"No artist,,2015\n"
        b"Bad year,Adele,19x5\n"
        b"Too early,Adele,1200\n" + b"x" * 201 + b",Adele,\n"
        b"Caf\xe9,Latin-1,\n"
        b"Only a name\n"
        b"Also fine,Adele\n",
    )

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 3
    assert rejections(result) == [
        f"{songs}:2: name: must not contain control characters",
        f"{songs}:5: artist: String should have at least 1 character",
        f"{songs}:6: year: Input should be a valid integer",
        f"{songs}:7: year: Input should be greater than or equal to 1860",
        f"{songs}:8: name: String should have at most 200 characters",
        f"{songs}:9: not UTF-8",
        f"{songs}:10: artist: Field required",
    ]
    assert "2 songs were added, 0 updated, 0 skipped as already there, 7 rejected" in result.stdout
    assert [name for _, name, _, _ in rows(catalog)] == ["Fine", "Also fine"]


def test_ndjson_and_json_arrays_name_their_lines(catalog: URL, tmp_path: Path) -> None:
    ndjson = write(
        tmp_path / "songs.ndjson",
        '{"name": "Halo", "artist": "Beyoncé", "year": 2008}\n\n{"name": "Broken\n[1, 2]\n{"name": "Xo"}\n',
    )
    array = write(tmp_path / "more.json", '[\n  {"name": "Creep", "artist": "Radiohead"},\n  "song",\n  {"year": 1}\n]')

    result = runner.invoke(cli, ["import", ndjson, array])

    assert result.exit_code == 3
    assert rejections(result) == [
        f"{ndjson}:3: not valid JSON: unexpected end of data: line 1 column 17 (char 16)",
        f"{ndjson}:4: not a JSON object but an array",
        f"{ndjson}:5: artist: Field required",
        f"{array}:3: not a JSON object but a string",
        f"{array}:4: name: Field required; artist: Field required; year: Input should be greater than or equal to 1860",
    ]
    assert [name for _, name, _, _ in rows(catalog)] == ["Halo", "Creep"]


def test_standard_input_with_a_format(catalog: URL) -> None:
    lines = "".join(json.dumps({"name": f"Song {i}", "artist": "Band"}) + "\n" for i in range(3))

    result = runner.invoke(cli, ["import", "--format", "ndjson", "-"], input=lines)

    assert result.exit_code == 0, result.output
    assert len(rows(catalog)) == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-"], "give --format to read standard input"),
        (["songs.txt"], "songs.txt: cannot tell the format from the extension"),
        (["missing.csv"], "No such file or directory"),
    ],
)
def test_unusable_arguments_fail_before_anything_is_written(catalog: URL, arguments: list[str], message: str) -> None:
    result = runner.invoke(cli, ["import", *arguments])

    assert result.exit_code == 1
    assert message in result.stderr
    assert rows(catalog) == []


def test_a_time_that_utc_cannot_hold_is_a_rejected_row(catalog: URL, tmp_path: Path) -> None:
    songs = write(
        tmp_path / "songs.ndjson",
        '{"name": "A", "artist": "B", "created_at": "0001-01-01T00:00:00+05:00"}\n'
        '{"name": "C", "artist": "B", "updated_at": "9999-12-31T23:00:00-05:00"}\n'
        '{"name": "D", "artist": "B", "created_at": "2001-01-01T00:00:00+05:00"}\n',
    )

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 3, result.output
    assert rejections(result) == [
        f"{songs}:1: created_at: must be a time between the years 1 and 9999 in UTC",
        f"{songs}:2: updated_at: must be a time between the years 1 and 9999 in UTC",
    ]
    assert [name for _, name, _, _ in rows(catalog)] == ["D"]


def test_a_file_that_is_not_songs_fails_the_whole_import(catalog: URL, tmp_path: Path) -> None:
    good = write(tmp_path / "good.csv", "name,artist\nHalo,Beyoncé\n")
    bad = write(tmp_path / "bad.csv", "title,singer\nHalo,Beyoncé\n")

    result = runner.invoke(cli, ["import", good, bad])

    assert result.exit_code == 1
    assert f"{bad}: line 1: the header has no name and no artist column (it has: title, singer)" in result.stderr
    assert "nothing was imported" in result.stderr
    assert rows(catalog) == []


def test_a_csv_field_past_the_readers_limit_fails_the_import_instead_of_becoming_rows(
    catalog: URL, tmp_path: Path
) -> None:
    # The reader stops inside the field: what follows its first line is no row of the file.
    songs = write(
        tmp_path / "songs.csv",
        'name,artist,year\nA,B,2000\n"' + "x" * 140_000 + '\nstill the same field",C,2001\nD,E,2002\n',
    )

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 1
    assert f"{songs}: line 3: not valid CSV: field larger than field limit" in result.stderr
    assert "nothing was imported" in result.stderr
    assert rows(catalog) == []


ELEMENT = b'{"name": "Halo", "artist": "Beyonc\\u00e9"}'


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "nested.json",
            b'[{"name": "a", "artist": "b", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]",
            "line 1: not valid JSON: nested too deeply",
        ),
        (
            "digits.json",
            b'[{"name": "a", "artist": "b", "year": ' + b"9" * 5000 + b"}]",
            "line 1: not valid JSON: Exceeds the limit (4300 digits) for integer string conversion",
        ),
        # Read on past the 1 MiB an element may take, a syntax error is still told as one,
        (
            "bad-then-long.json",
            b"[" + ELEMENT + b',\n{"name": x},\n' + b",\n".join([ELEMENT] * 40_000) + b"]",
            "line 2: not valid JSON: Expecting value",
        ),
        # also where the element before it crossed the end of a read,
        (
            "bad-after-a-read.json",
            b'[{"name": "'
            + b"h" * 65_500
            + b'", "artist": "b"},\n{"name": "Help", "artist": x},\n'
            + b",\n".join([ELEMENT] * 40_000)
            + b"]",
            "line 2: not valid JSON: Expecting value",
        ),
        # and an element that long, as too long, however little past 1 MiB.
        (
            "long.json",
            b"[" + ELEMENT + b',\n{"name": "' + b"y" * 2_000_000 + b'"}]',
            "line 2: an element of the array is larger than 1 MiB",
        ),
        (
            "just-too-long.json",
            b"[" + ELEMENT + b',\n{"name": "' + b"y" * 1_100_000 + b'", "artist": "b"}]',
            "line 2: an element of the array is larger than 1 MiB",
        ),
        # A CSV file without a header (empty, or blank lines only) is not an empty catalog.
        ("empty.csv", b"", "line 1: no header; a CSV file starts with one naming name and artist"),
        ("blank.csv", b"\n\n", "line 2: no header; a CSV file starts with one naming name and artist"),
        ("latin-1.csv", "titre,artiste,année\nA,B,2000\n".encode("latin-1"), "line 1: the header is not UTF-8"),
        # A second array would go unread, as would anything else after the first.
        ("two.json", b'[{"name": "A", "artist": "B"}]\n[{"name": "C", "artist": "B"}]', "line 2: found '[' after"),
        ("after.json", b"[] x", "line 1: found 'x' after the array"),
        # A quote that never closes would take the rows after it into its field; text after a closing one.
        ("open-quote.csv", b'name,artist\nU1,A\n"U2,A\nU3,A\nU4,A\n', "line 3: not valid CSV: unexpected end of data"),
        ("after-quote.csv", b'name,artist\n"ab"c,A\n', "line 2: not valid CSV: ',' expected after '\"'"),
    ],
)
def test_a_file_that_cannot_be_read_is_named_with_its_line_and_reason(
    catalog: URL, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    songs = write(tmp_path / name, content)

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 1
    assert f"{songs}: {message}" in result.stderr
    assert "nothing was imported" in result.stderr
    assert "Traceback" not in result.output
    assert rows(catalog) == []


def test_blank_lines_before_the_header_are_passed_over(catalog: URL, tmp_path: Path) -> None:
    songs = write(tmp_path / "songs.csv", "\n\nname,artist\nHalo,Beyoncé\n,Nobody\n")

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 3, result.output
    assert rejections(result) == [f"{songs}:5: name: String should have at least 1 character"]
    assert [name for _, name, _, _ in rows(catalog)] == ["Halo"]


def test_columns_not_read_may_repeat_and_a_file_named_like_markup_is_named_as_it_is(
    catalog: URL, tmp_path: Path
) -> None:
    (tmp_path / "a[").mkdir()
    # A spreadsheet's blank trailing cells, and a column named twice that the import does not read.
    songs = write(tmp_path / "a[" / "x].csv", "name,artist,note,note,,\nHalo,Beyoncé,a,b,,\n")

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 0, result.output
    assert f"{songs}: 1 rows read" in result.stderr
    assert [name for _, name, _, _ in rows(catalog)] == ["Halo"]


def test_an_id_must_be_a_whole_number_as_json_writes_one(catalog: URL, tmp_path: Path) -> None:
    songs = write(
        tmp_path / "songs.ndjson",
        '{"name": "A", "artist": "B", "id": true}\n{"name": "C", "artist": "B", "id": "7"}\n'
        '{"name": "D", "artist": "B", "id": 9.0}\n{"name": "E", "artist": "B", "id": 11}\n',
    )

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 3
    assert rejections(result) == [f"{songs}:{line}: id: Input should be a valid integer" for line in (1, 2, 3)]
    assert [(song_id, name) for song_id, name, _, _ in rows(catalog)] == [(11, "E")]


SONGS = "name,artist,year\nYesterday,The Beatles,1965\nHalo,Beyoncé,2008\n"
AGAIN = "name,artist,year\nYESTERDAY,the beatles,1966\nCreep,Radiohead,1992\nyesterday,The Beatles,\n"


def test_skip_keeps_what_is_there_and_the_first_of_the_file(catalog: URL, tmp_path: Path) -> None:
    runner.invoke(cli, ["import", write(tmp_path / "a.csv", SONGS)])

    result = runner.invoke(cli, ["import", write(tmp_path / "b.csv", AGAIN)])

    assert result.exit_code == 0, result.output
    assert "1 songs were added, 0 updated, 2 skipped as already there, 0 rejected" in result.stdout
    assert rows(catalog) == [
        (1, "Yesterday", "The Beatles", 1965),
        (2, "Halo", "Beyoncé", 2008),
        (3, "Creep", "Radiohead", 1992),
    ]


def test_update_takes_the_last_of_the_file_and_the_last_year_given(catalog: URL, tmp_path: Path) -> None:
    runner.invoke(cli, ["import", write(tmp_path / "a.csv", SONGS)])

    result = runner.invoke(cli, ["import", "--on-conflict", "update", write(tmp_path / "b.csv", AGAIN)])

    assert result.exit_code == 0, result.output
    assert "1 songs were added, 1 updated, 1 skipped as already there, 0 rejected" in result.stdout
    # The last row gives no year: the one before it gave 1966, as if the rows came one after another.
    assert rows(catalog)[0] == (1, "yesterday", "The Beatles", 1966)
    assert len(rows(catalog)) == 3


def test_update_keeps_a_year_no_row_gives(catalog: URL, tmp_path: Path) -> None:
    runner.invoke(cli, ["import", write(tmp_path / "a.csv", SONGS)])
    again = "name,artist,year\nYESTERDAY,the beatles,\nNew,Band,2000\nnew,band,\n"

    result = runner.invoke(cli, ["import", "--on-conflict", "update", write(tmp_path / "b.csv", again)])

    assert result.exit_code == 0, result.output
    years = {name: year for _, name, _, year in rows(catalog)}
    assert years == {"YESTERDAY": 1965, "Halo": 2008, "new": 2000}


def test_error_rejects_songs_already_there_and_imports_the_rest(catalog: URL, tmp_path: Path) -> None:
    runner.invoke(cli, ["import", write(tmp_path / "a.csv", SONGS)])
    again = write(tmp_path / "b.csv", AGAIN)

    result = runner.invoke(cli, ["import", "--on-conflict", "error", again])

    assert result.exit_code == 3
    assert rejections(result) == [
        f"{again}:2: the catalog has this song already, with id 1",
        f"{again}:4: the catalog has this song already, with id 1",
    ]
    assert [name for _, name, _, _ in rows(catalog)] == ["Yesterday", "Halo", "Creep"]


def test_error_names_the_earlier_row_a_row_repeats(catalog: URL, tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", "name,artist\nCreep,Radiohead\n")
    second = write(tmp_path / "b.csv", "name,artist\nKarma Police,Radiohead\nCREEP,radiohead\nkarma police,Radiohead\n")

    result = runner.invoke(cli, ["import", "--on-conflict", "error", first, second])

    assert result.exit_code == 3
    assert rejections(result) == [
        f"{second}:3: the same song as {first}:2",
        f"{second}:4: the same song as line 2",
    ]
    assert [name for _, name, _, _ in rows(catalog)] == ["Creep", "Karma Police"]


def test_max_errors_stops_and_imports_nothing(catalog: URL, tmp_path: Path) -> None:
    songs = write(tmp_path / "songs.csv", "name,artist\nGood,Band\n,Band\n,Band\nAlso good,Band\n")

    stopped = runner.invoke(cli, ["import", "--max-errors", "1", songs])
    tolerated = runner.invoke(cli, ["import", "--max-errors", "2", songs])

    assert stopped.exit_code == 1
    assert "more than 1 rows rejected; nothing was imported" in stopped.stderr
    assert tolerated.exit_code == 3
    assert [name for _, name, _, _ in rows(catalog)] == ["Good", "Also good"]


@pytest.mark.parametrize(
    ("on_conflict", "content", "refused"),
    [
        # The first row of a song stands for it: line 2's id is another song's, line 5's is line 4's.
        (
            "skip",
            "1,Yesterday,The Beatles,1965\n,Yesterday,The Beatles,1965\n"
            "7,Halo,Beyoncé,\n7,Help,The Beatles,\n,Help,The Beatles,\n",
            (2, 5),
        ),
        # The last row of a song stands for it: line 3's id is another song's, line 6's is line 4's.
        (
            "update",
            ",Yesterday,The Beatles,1965\n1,Yesterday,The Beatles,1965\n"
            "7,Halo,Beyoncé,\n,Help,The Beatles,\n7,Help,The Beatles,\n",
            (3, 6),
        ),
    ],
)
def test_a_song_whose_standing_row_is_refused_is_added_by_its_other_row(
    catalog: URL, tmp_path: Path, on_conflict: str, content: str, refused: tuple[int, int]
) -> None:
    runner.invoke(cli, ["import", write(tmp_path / "a.csv", "id,name,artist\n1,Creep,Radiohead\n")])
    songs = write(tmp_path / "b.csv", "id,name,artist,year\n" + content)

    result = runner.invoke(cli, ["import", "--on-conflict", on_conflict, songs])

    assert result.exit_code == 3, result.output
    assert rejections(result) == [
        f"{songs}:{refused[0]}: id 1 is another song's",
        f"{songs}:{refused[1]}: id 7 is given to an earlier row too",
    ]
    assert "3 songs were added, 0 updated, 0 skipped as already there, 2 rejected" in result.stdout
    ids = {name: song_id for song_id, name, _, _ in rows(catalog)}
    assert ids.keys() == {"Creep", "Yesterday", "Halo", "Help"}
    assert ids["Halo"] == 7
    assert search(catalog, "yesterday") == [ids["Yesterday"]]


@pytest.mark.parametrize(
    ("on_conflict", "content"),
    [
        ("skip", "id,name,artist\n,Halo,Beyoncé\n7,Halo,Beyoncé\n7,Help,The Beatles\n"),
        ("update", "id,name,artist\n7,Halo,Beyoncé\n7,Help,The Beatles\n,Halo,Beyoncé\n"),
    ],
)
def test_an_id_brought_by_a_row_that_stands_for_no_song_is_free_for_the_next(
    catalog: URL, tmp_path: Path, on_conflict: str, content: str
) -> None:
    # Halo's row with id 7 is folded into Halo's row without one: id 7 is Help's.
    result = runner.invoke(cli, ["import", "--on-conflict", on_conflict, write(tmp_path / "songs.csv", content)])

    assert result.exit_code == 0, result.output
    assert "2 songs were added, 0 updated, 1 skipped as already there, 0 rejected" in result.stdout
    ids = {name: song_id for song_id, name, _, _ in rows(catalog)}
    assert ids["Help"] == 7
    assert ids["Halo"] != 7


def test_ids_that_clash_in_a_long_chain_stop_the_import(catalog: URL, tmp_path: Path) -> None:
    # Song k's first row brings id k, which song k-1's second row brings too: each refusal hands
    # a song to a row whose id is refused in turn, one more pass each.
    lines = ["id,name,artist", "1,Song 1,Band"]
    for number in range(2, DECIDE_PASSES + 3):
        lines += [f"{number - 1},Song {number},Band", f"{number},Song {number},Band"]
    songs = write(tmp_path / "chain.csv", "\n".join(lines) + "\n")

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 1
    assert f"clash in a chain of more than {DECIDE_PASSES} rows" in result.stderr
    assert "nothing was imported" in result.stderr
    assert rows(catalog) == []


@pytest.mark.parametrize("on_conflict", ["skip", "update"])
def test_a_song_repeated_with_a_taken_id_more_times_than_the_passes_is_refused_row_by_row(
    catalog: URL, tmp_path: Path, on_conflict: str
) -> None:
    runner.invoke(cli, ["import", write(tmp_path / "first.csv", "id,name,artist\n1,Halo,Beyoncé\n")])
    repeats = ["1,Creep,Radiohead"] * (DECIDE_PASSES + 4)
    # The row that can stand comes last in the order its rule reads: the first to skip, the last to update.
    lines = [*repeats, ",Creep,Radiohead"] if on_conflict == "skip" else [",Creep,Radiohead", *repeats]
    songs = write(tmp_path / "songs.csv", "\n".join(["id,name,artist", *lines]) + "\n")

    result = runner.invoke(cli, ["import", "--on-conflict", on_conflict, songs])

    assert result.exit_code == 3, result.output
    assert len(rejections(result)) == len(repeats)
    assert all(rejection.endswith("id 1 is another song's") for rejection in rejections(result))
    ids = {name: song_id for song_id, name, _, _ in rows(catalog)}
    assert ids.keys() == {"Halo", "Creep"}
    assert ids["Halo"] == 1


def test_under_error_a_song_another_writer_adds_meanwhile_stops_the_import(
    catalog: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if catalog.get_backend_name() == "sqlite":
        pytest.skip("SQLite's import holds the write lock from its start: no song is added meanwhile")
    insert = Import._insert

    async def added_meanwhile(job: Import, *args: Any, **kwargs: Any) -> set[tuple[str, str]]:
        # Committed by another writer after the import found the catalog without it, before its insert.
        song = "'Creep', 'Radiohead', 'creep', 'radiohead', 'creep', 'radiohead'"
        sql = f"INSERT INTO song (name, artist, name_key, artist_key, name_search, artist_search) VALUES ({song})"
        await asyncio.to_thread(alter, catalog, sql)
        return await insert(job, *args, **kwargs)

    monkeypatch.setattr(Import, "_insert", added_meanwhile)

    result = runner.invoke(
        cli, ["import", "--on-conflict", "error", write(tmp_path / "a.csv", SONGS + "Creep,Radiohead,\n")]
    )

    assert result.exit_code == 1
    assert "songs the input has were added by another writer while the import ran" in result.stderr
    assert "nothing was imported" in result.stderr
    assert [name for _, name, _, _ in rows(catalog)] == ["Creep"]


def test_dry_run_reports_what_would_happen_and_writes_nothing(catalog: URL, tmp_path: Path) -> None:
    runner.invoke(cli, ["import", write(tmp_path / "a.csv", SONGS)])

    result = runner.invoke(cli, ["import", "--dry-run", write(tmp_path / "b.csv", AGAIN + ",Nobody,\n")])

    assert result.exit_code == 3
    assert "1 songs would be added, 0 updated, 2 skipped as already there, 1 rejected" in result.stdout
    assert "dry run, nothing was written" in result.stdout
    assert len(rows(catalog)) == 2
    # Nothing half-done is left behind either: a real import still works.
    assert runner.invoke(cli, ["import", write(tmp_path / "c.csv", AGAIN)]).exit_code == 0
    assert search(catalog, "creep") == [song_id for song_id, name, _, _ in rows(catalog) if name == "Creep"]


def test_ids_from_an_export_are_kept_and_never_handed_out_again(catalog: URL, tmp_path: Path) -> None:
    songs = write(
        tmp_path / "songs.csv",
        "id,name,artist\n7,Halo,Beyoncé\n3,Creep,Radiohead\n7,Other,Band\n,No id,Band\n",
    )

    result = runner.invoke(cli, ["import", songs])
    taken = runner.invoke(cli, ["import", write(tmp_path / "taken.csv", "id,name,artist\n3,New,Band\n")])
    after = runner.invoke(cli, ["import", write(tmp_path / "new.csv", "name,artist\nNewest,Band\n")])

    assert result.exit_code == 3
    assert f"{songs}:4: id 7 is given to an earlier row too" in result.stderr
    assert taken.exit_code == 3
    assert "taken.csv:2: id 3 is another song's" in taken.stderr
    assert after.exit_code == 0
    ids = {name: song_id for song_id, name, _, _ in rows(catalog)}
    assert ids["Halo"] == 7
    assert ids["Creep"] == 3
    assert ids["No id"] > 7
    assert ids["Newest"] > ids["No id"]


def test_a_row_without_an_id_before_one_that_brings_a_larger_id_takes_neither(catalog: URL, tmp_path: Path) -> None:
    # The row without an id is inserted between the two that bring one: it must not take 8.
    songs = write(tmp_path / "songs.csv", "id,name,artist\n7,Creep,Radiohead\n,Halo,Beyoncé\n8,Help,The Beatles\n")

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 0, result.output
    assert "3 songs were added, 0 updated, 0 skipped as already there, 0 rejected" in result.stdout
    ids = {name: song_id for song_id, name, _, _ in rows(catalog)}
    assert ids["Creep"] == 7
    assert ids["Help"] == 8
    assert ids["Halo"] > 8
    assert search(catalog, "halo") == [ids["Halo"]]


def test_new_songs_that_would_need_ids_past_the_largest_stop_the_import(catalog: URL, tmp_path: Path) -> None:
    songs = write(
        tmp_path / "songs.ndjson", '{"id": 2147483647, "name": "A", "artist": "B"}\n{"name": "C", "artist": "B"}\n'
    )

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 1
    assert "would need ids past 2,147,483,647" in result.stderr
    assert "nothing was imported" in result.stderr
    assert rows(catalog) == []


def test_an_unreachable_database_is_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://songbook:hunter2@127.0.0.1:9/songbook")

    result = runner.invoke(cli, ["import", write(tmp_path / "a.csv", SONGS)])

    assert result.exit_code == 1
    assert "cannot import into postgresql+asyncpg://songbook:***@127.0.0.1:9/songbook" in result.stderr
    assert "nothing was imported" in result.stderr
    assert "Traceback" not in result.output


def test_a_bulk_import_and_export_are_not_cut_by_the_statement_timeout(
    catalog: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service's timeout is for requests; an import's one insert takes as long as its file.
    monkeypatch.setenv("SONGBOOK_STATEMENT_TIMEOUT_MS", "1")
    songs = write(tmp_path / "songs.csv", "name,artist\n" + "".join(f"Song {i},Band {i % 50}\n" for i in range(5000)))

    imported = runner.invoke(cli, ["import", songs])
    exported = runner.invoke(cli, ["export"])

    assert imported.exit_code == 0, imported.output
    assert exported.exit_code == 0, exported.output
    assert len(exported.stdout.splitlines()) == 5001


def test_a_row_the_database_refuses_is_not_mistaken_for_a_race(catalog: URL, tmp_path: Path) -> None:
    # A rule of the database's that the rows' checks do not know, as a schema ahead of the code would have.
    if catalog.get_backend_name() == "postgresql":
        refuse = "ALTER TABLE song ADD CONSTRAINT ck_test_refused CHECK (name <> 'Refused')"
        allow = "ALTER TABLE song DROP CONSTRAINT ck_test_refused"
    else:
        refuse = (
            "CREATE TRIGGER test_refused BEFORE INSERT ON song WHEN NEW.name = 'Refused' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        allow = "DROP TRIGGER test_refused"
    alter(catalog, refuse)
    try:
        result = runner.invoke(cli, ["import", write(tmp_path / "songs.csv", "name,artist\nFine,Band\nRefused,Band\n")])
    finally:
        alter(catalog, allow)

    assert result.exit_code == 1
    assert "cannot import into" in result.stderr
    assert result.stderr.rstrip().endswith("nothing was imported")
    assert "took an id" not in result.stderr
    assert rows(catalog) == []


def test_a_large_import_into_an_empty_catalog_builds_its_indexes_and_vocabulary_once(
    catalog: URL, tmp_path: Path
) -> None:
    before = song_table(catalog)
    count = 3 * BATCH_SIZE // 2  # more than a batch: checked in a worker process
    lines = "".join(f"Song {i},Band {i % 100}\n" for i in range(count - 2))
    songs = write(tmp_path / "songs.csv", "name,artist\n" + lines + "Song 7,Band 7\nZyzzyva,Band 1\n")

    result = runner.invoke(cli, ["import", songs])

    assert result.exit_code == 0, result.output
    assert f"{count - 1:,} songs were added, 0 updated, 1 skipped" in result.stdout
    assert song_table(catalog) == before  # on PostgreSQL, a copy of the table with the same indexes and triggers
    assert search(catalog, "zyzzyva") == [count - 1]
    if catalog.get_backend_name() == "postgresql":
        assert query(catalog, "SELECT term FROM search_term WHERE term = 'zyzzyva'") == [("zyzzyva",)]
    # The unique pair holds again: the same songs are all skipped.
    again = runner.invoke(cli, ["import", songs])
    assert f"0 songs were added, 0 updated, {count:,} skipped" in again.stdout
