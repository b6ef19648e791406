"""Settings: defaults that run anywhere, and one clear line for a bad value."""

from pathlib import Path

import pytest

from app.config import Settings, load_settings
from app.errors import SettingsError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The settings read the process environment and ./.env: start each test from neither.
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "SONGBOOK_DATABASE_URL", "SONGBOOK_POOL_SIZE", "SONGBOOK_PORT", "SONGBOOK_SQL_ECHO"):
        monkeypatch.delenv(name, raising=False)


def test_default_database_is_a_sqlite_file_in_the_data_dir() -> None:
    settings = load_settings()

    assert str(settings.sqlalchemy_url) == "sqlite+aiosqlite:///data/songbook.db"
    assert settings.sql_echo is False


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgresql://u:p@db:5432/songs", "postgresql+asyncpg://u:***@db:5432/songs"),
        ("postgres://u:p@db/songs", "postgresql+asyncpg://u:***@db/songs"),
        ("postgresql+asyncpg://u@db/songs", "postgresql+asyncpg://u@db/songs"),
        ("sqlite:////var/lib/songbook.db", "sqlite+aiosqlite:////var/lib/songbook.db"),
        # Several servers, as libpq and asyncpg write them: as SQLAlchemy's asyncpg dialect takes them.
        (
            "postgresql://u:p@h1:5433,h2/songs?target_session_attrs=read-write",
            "postgresql+asyncpg://u:***@/songs?host=h1%3A5433&host=h2%3A5432&target_session_attrs=read-write",
        ),
    ],
)
def test_database_urls_mean_the_async_drivers(monkeypatch: pytest.MonkeyPatch, raw: str, expected: str) -> None:
    monkeypatch.setenv("DATABASE_URL", raw)

    assert repr(load_settings().sqlalchemy_url) == expected


def test_settings_are_read_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SONGBOOK_POOL_SIZE=3\nDATABASE_URL=postgres://db/songs\n")

    settings = load_settings()

    assert (settings.pool_size, settings.sqlalchemy_url.database) == (3, "songs")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SONGBOOK_POOL_SIZE", "many", "invalid setting SONGBOOK_POOL_SIZE='many': Input should be a valid integer"),
        ("SONGBOOK_PORT", "70000", "invalid setting SONGBOOK_PORT='70000': Input should be less than or equal"),
        ("SONGBOOK_SQL_ECHO", "perhaps", "invalid setting SONGBOOK_SQL_ECHO='perhaps': Input should be a valid bool"),
        ("DATABASE_URL", "mysql://root:s3cret@db/x", "invalid setting DATABASE_URL: unsupported database 'mysql'"),
        ("DATABASE_URL", "not a url", "invalid setting DATABASE_URL: not a database URL"),
        (
            "SONGBOOK_REDIS_URL",
            "localhost:6379",
            "invalid setting SONGBOOK_REDIS_URL: must be a redis://, rediss:// or unix:// URL",
        ),
        ("SONGBOOK_REDIS_URL", "redis://:s3cret@localhost:abc/0", "invalid setting SONGBOOK_REDIS_URL: Port could not"),
        (
            "DATABASE_URL",
            "postgresql://u:s3cret@h1:x,h2/db",
            "invalid setting DATABASE_URL: 'h1:x' in the list of hosts",
        ),
        (
            "DATABASE_URL",
            "postgresql://h1,h2/db?target_session_attrs=primary-only",
            "invalid setting DATABASE_URL: target_session_attrs must be one of any, primary, standby",
        ),
        # A network uvicorn cannot read would trust no proxy, silently.
        (
            "SONGBOOK_FORWARDED_ALLOW_IPS",
            "10.0.0.0/8, 127.0.0.1/8",
            "invalid setting SONGBOOK_FORWARDED_ALLOW_IPS='10.0.0.0/8, 127.0.0.1/8': 127.0.0.1/8 has host bits set",
        ),
        ("SONGBOOK_HOST", "", "invalid setting SONGBOOK_HOST='': String should have at least 1 character"),
        ("SONGBOOK_IDEMPOTENCY_TTL_SECONDS", "400000000000", "invalid setting SONGBOOK_IDEMPOTENCY_TTL_SECONDS="),
        ("SONGBOOK_STATEMENT_TIMEOUT_MS", "2147483648", "invalid setting SONGBOOK_STATEMENT_TIMEOUT_MS="),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    message = str(raised.value)
    assert message.startswith(expected)
    assert "\n" not in message
    assert "s3cret" not in message


def test_settings_can_be_given_in_code_without_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://ignored/db")

    settings = Settings(database_url="sqlite:///given.db")

    assert settings.sqlalchemy_url.database == "given.db"
