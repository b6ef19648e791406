"""Properties, checked by Hypothesis over generated input: what validation accepts, and what a song reads back as."""

import unicodedata
from collections.abc import Iterator
from functools import partial

import httpx
import pydantic
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL

from app.config import Settings
from app.fields import TEXT_MAX, YEAR_MIN, utcnow
from app.folding import song_key
from app.main import create_app
from app.models import SongCreate
from tests.catalog import new_key

# Text as people type it, and as programs mangle it: accents composed and not,
# other scripts, emoji, spaces around, and now and then a control character.
texts = st.lists(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
        st.sampled_from(["e\u0301", " ", "\t", "\x00", "\x1f", "\u00e9", "\u3000", "ß", "ﬁ", "İ", "😀"]),
    ),
    max_size=TEXT_MAX + 20,
).map("".join)
years = st.one_of(st.none(), st.integers(min_value=1800, max_value=2100))


# Unicode's White_Space characters: what trimming removes. Python's str.strip()
# removes four more, the information separators U+001C to U+001F, which are
# control characters and so refused.
WHITE_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def trimmed(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip(WHITE_SPACE)


def acceptable(text: str) -> bool:
    """The rule for a name or an artist, said independently of the code that applies it."""
    kept = trimmed(text)
    return 1 <= len(kept) <= TEXT_MAX and not any(unicodedata.category(char) == "Cc" for char in kept)


def plausible(year: int | None) -> bool:
    return year is None or YEAR_MIN <= year <= utcnow().year + 1


@given(name=texts, artist=texts, year=years)
def test_validation_accepts_exactly_what_the_rules_allow(name: str, artist: str, year: int | None) -> None:
    try:
        song = SongCreate(name=name, artist=artist, year=year)
    except pydantic.ValidationError:
        accepted = False
    else:
        accepted = True
        assert (song.name, song.artist) == (trimmed(name), trimmed(artist))

    assert accepted == (acceptable(name) and acceptable(artist) and plausible(year))


class Api:
    """The app, run by an event loop of its own, for tests that Hypothesis drives synchronously."""

    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self.portal, self.client = portal, client

    def post(self, url: str, body: object) -> httpx.Response:
        return self.portal.call(partial(self.client.post, url, json=body))

    def get(self, url: str, **params: str) -> httpx.Response:
        return self.portal.call(partial(self.client.get, url, params=params))


@pytest.fixture
def api(catalog: URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    app_settings = Settings(
        database_url=catalog.render_as_string(hide_password=False),
        data_dir=tmp_path_factory.mktemp("properties"),
        rate_limit_per_second=0,
    )

    key = new_key(app_settings, "write")
    application = create_app(app_settings)
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    client = httpx.AsyncClient(
        transport=transport, base_url="http://songbook.test", headers={"Authorization": f"Bearer {key}"}
    )

    async def lifespan() -> LifespanManager:
        return LifespanManager(application)  # made in the loop it runs in

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(portal.call(lifespan)),
        portal.wrap_async_context_manager(client),
    ):
        yield Api(portal, client)


@given(name=texts, artist=texts, year=years)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_accepted_song_reads_back_identical(api: Api, name: str, artist: str, year: int | None) -> None:
    created = api.post("/songs", {"name": name, "artist": artist, "year": year})

    assert created.status_code in (201, 409, 422), created.text
    if created.status_code == 422:
        assert not (acceptable(name) and acceptable(artist) and plausible(year))
        return
    if created.status_code == 409:  # an earlier example was the same song
        existing = api.get(f"/songs/{created.json()['existing_id']}").json()
        assert (song_key(existing["name"]), song_key(existing["artist"])) == (song_key(name), song_key(artist))
        return
    song = created.json()
    assert api.get(f"/songs/{song['id']}").json() == song
    assert (song["name"], song["artist"], song["year"]) == (trimmed(name), trimmed(artist), year)
    listed = api.get("/songs", name=song["name"], artist=song["artist"]).json()
    assert listed == [song]
