"""The `songbook` command."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from app import schema
from app.cli import cli
from tests.catalog import alter
from tests.server import free_port

runner = CliRunner()


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, empty_database: URL) -> URL:
    monkeypatch.setenv("DATABASE_URL", empty_database.render_as_string(hide_password=False))
    return empty_database


def test_migrate_brings_a_new_database_to_the_latest_revision(database: URL) -> None:
    result = runner.invoke(cli, ["migrate"])

    assert result.exit_code == 0, result.output
    assert "latest revision" in result.output
    assert runner.invoke(cli, ["migrate", "status"]).exit_code == 0


def test_migrate_status_exits_1_on_a_database_behind(database: URL) -> None:
    schema.upgrade(database, "7fccabe9f34a")

    result = runner.invoke(cli, ["migrate", "status"])

    assert result.exit_code == 1
    assert "current:  7fccabe9f34a" in result.output
    assert "run `songbook migrate`" in result.output


def test_migrate_status_of_a_sqlite_file_not_there_leaves_none_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'mistyped.db'}")

    result = runner.invoke(cli, ["migrate", "status"])

    assert result.exit_code == 1
    assert "current:  (none: never migrated)" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_migrate_status_tells_a_database_a_newer_version_migrated(database: URL) -> None:
    schema.upgrade(database)
    alter(database, "UPDATE alembic_version SET version_num = 'f0f0f0f0f0f0'")

    result = runner.invoke(cli, ["migrate", "status"])

    assert result.exit_code == 0, result.output
    assert "past this version's latest" in result.output


def test_migrate_creates_the_default_sqlite_file_on_a_fresh_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SONGBOOK_DATA_DIR", str(tmp_path / "nested" / "data"))

    result = runner.invoke(cli, ["migrate"])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "nested" / "data" / "songbook.db").is_file()


def test_an_export_from_an_unreachable_database_names_the_database_not_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://songbook:hunter2@127.0.0.1:9/songbook")
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(cli, ["export", "-o", "songs.csv"])

    assert result.exit_code == 1
    assert result.stderr.startswith("songbook: cannot export from postgresql+asyncpg://songbook:***@127.0.0.1:9/")
    assert list(tmp_path.iterdir()) == []


def test_an_export_that_cannot_write_its_file_names_the_file(catalog: URL, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["export", "-o", str(tmp_path / "missing" / "songs.csv")])

    assert result.exit_code == 1
    assert result.stderr.startswith(f"songbook: cannot write {tmp_path / 'missing' / 'songs.csv'}: ")


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("songs.txt", "songs.txt: cannot tell the format from the extension; give --format csv or ndjson"),
        ("songs.json", "songs.json: export writes csv or ndjson, not json; give --format csv or ndjson"),
    ],
)
def test_an_export_to_a_file_of_no_format_it_writes_says_what_to_give(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, output: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(cli, ["export", "-o", output])

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"songbook: {message}"]


def test_export_offers_only_what_it_writes() -> None:
    result = runner.invoke(cli, ["export", "--format", "json"])

    assert result.exit_code == 2
    assert "'json' is not one of 'csv', 'ndjson'" in " ".join(result.output.replace("│", " ").split())


def test_unreachable_database_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://songbook:hunter2@127.0.0.1:9/songbook")

    result = runner.invoke(cli, ["migrate", "status"])

    assert result.exit_code == 1
    assert "cannot read postgresql+asyncpg://songbook:***@127.0.0.1:9/songbook" in result.output
    assert "hunter2" not in result.output


@pytest.mark.parametrize(
    ("command", "verb"), [(["export"], "export from"), (["import", "-"], "import into"), (["seed"], "seed")]
)
def test_a_database_never_migrated_is_one_line_telling_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str], verb: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)

    result = runner.invoke(
        cli, [*command, "--format", "csv"] if "import" in command else command, input="name,artist\n"
    )

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"songbook: cannot {verb} sqlite+aiosqlite:///data/songbook.db: The database has no songbook schema; "
        "run `songbook migrate`."
    ]
    assert not (tmp_path / "data" / "songbook.db").exists()  # not made by asking


@pytest.mark.parametrize(
    "command", [["keys", "create", "--name", "ci", "--scope", "write"], ["keys", "list"], ["keys", "revoke", "ci"]]
)
def test_a_database_never_migrated_is_one_line_for_the_keys_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)

    result = runner.invoke(cli, command)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["songbook: The database has no songbook schema; run `songbook migrate`."]
    assert not (tmp_path / "data" / "songbook.db").exists()


def test_a_database_behind_the_latest_migration_can_still_be_exported(
    empty_database: URL, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A backup before `songbook migrate`, say: the schema one revision behind.
    schema.upgrade(empty_database, "d3f8a1b6c9e2")
    monkeypatch.setenv("DATABASE_URL", empty_database.render_as_string(hide_password=False))

    result = runner.invoke(cli, ["export", "-o", str(tmp_path / "songs.csv")])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "songs.csv").read_text() == "id,name,artist,year,created_at,updated_at\n"


@pytest.mark.parametrize("port", ["0", "65536", "83636"])
def test_a_port_out_of_range_is_refused(port: str) -> None:
    result = runner.invoke(cli, ["serve", "--port", port])

    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.stderr


@pytest.mark.parametrize("command", [["serve"], ["migrate"]])
def test_bad_setting_stops_with_one_line_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    songbook = Path(sys.executable).parent / "songbook"

    result = subprocess.run(
        [str(songbook), *command],
        env={"SONGBOOK_PORT": "eighty", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "songbook: invalid setting SONGBOOK_PORT='eighty': Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


def test_serve_answers_the_guides_routes_on_a_fresh_sqlite_database(tmp_path: Path) -> None:
    songbook = str(Path(sys.executable).parent / "songbook")
    env = {"PATH": "/usr/bin:/bin", "SONGBOOK_DATA_DIR": str(tmp_path / "data"), "SONGBOOK_LOG_LEVEL": "warning"}
    subprocess.run([songbook, "migrate"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    key = subprocess.run(
        [songbook, "keys", "create", "--name", "me", "--scope", "write"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen([songbook, "serve", "--port", str(port)], env=env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(f"{base}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        refused = httpx.post(f"{base}/songs", json={"name": "Yesterday", "artist": "The Beatles"})
        created = httpx.post(
            f"{base}/songs",
            json={"name": "Yesterday", "artist": "The Beatles"},
            headers={"Authorization": f"Bearer {key}"},
        )
        listed = httpx.get(f"{base}/songs")
        head = _raw_request(port, b"HEAD /songs HTTP/1.1\r\nHost: songbook\r\nConnection: close\r\n\r\n")
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert refused.status_code == 401
    assert created.status_code == 201
    assert [song["name"] for song in listed.json()] == ["Yesterday"]
    # HEAD: GET's status and length, and nothing after the headers.
    status, _, rest = head.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK"
    assert f"content-length: {len(listed.content)}".encode() in headers.lower().splitlines()
    assert body == b""


def _raw_request(port: int, request: bytes) -> bytes:
    """What the server sends back, byte for byte, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer
