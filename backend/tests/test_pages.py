"""The web page, over HTTP through the real application: what it answers, and what it refuses.

What a person sees and does in a browser is in test_browser.py.
"""

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import unescape
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text

from app import songs, web
from app.config import Settings
from app.db import Database
from app.fields import ID_MAX
from app.formats import RawRow
from app.main import create_app
from app.routes import pages
from tests.catalog import empty_catalog
from tests.conftest import make_key
from tests.factories import make_song

PAGES = ["/", "/ui/artists", "/ui/sign-in", "/ui/songs/new", "/ui/import"]
TOKEN = re.compile(r'name="token" value="([^"]+)"')


@asynccontextmanager
async def browser(app: FastAPI, base: str = "http://songbook.test") -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps its cookies, as a browser does, and sends no key of its own."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        yield client


@pytest.fixture
async def person(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(app) as client:
        yield client


async def token(client: httpx.AsyncClient, path: str = "/ui/sign-in") -> str:
    """The form token of the page at `path`, as the person's browser got it."""
    page = await client.get(path)
    found = TOKEN.search(page.text)
    assert found, page.text
    return found[1]


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/ui/sign-in", data={"token": await token(client), "key": key, "next": "/"})


async def signed_in(app: FastAPI, client: httpx.AsyncClient, scope: str = "write") -> str:
    key = await make_key(app, scope)  # type: ignore[arg-type]
    answer = await sign_in(client, key)
    assert answer.status_code == 303, answer.text
    return key


async def execute(db: Database, statement: str) -> None:
    """What another client does to the database meanwhile."""
    async with db.engine.begin() as connection:
        await connection.execute(text(statement))


def count_songs(rows: str) -> int:
    return len(re.findall(r'<a href="/ui/songs/\d+', rows))


async def test_the_page_answers_the_root_and_the_api_is_unchanged(person: httpx.AsyncClient, db: Database) -> None:
    await make_song(db, name="Yesterday", artist="The Beatles", year=1965)

    page = await person.get("/")
    api = await person.get("/songs")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "Yesterday" in page.text
    assert api.headers["content-type"] == "application/json"
    assert api.json()[0]["name"] == "Yesterday"
    paths = (await person.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/ui")]


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_forbids_inline_script_other_origins_and_framing(
    app: FastAPI, person: httpx.AsyncClient, path: str
) -> None:
    await signed_in(app, person)

    page = await person.get(path)

    assert page.status_code == 200
    policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert page.headers["x-frame-options"] == "DENY"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.DOTALL)
    assert scripts
    assert all('src="/ui/static/' in attributes and not body.strip() for attributes, body in scripts)
    assert " style=" not in page.text
    assert not re.search(r"""(src|href|action)=["']?(https?:)?//""", page.text)  # nothing from another origin


async def test_what_a_person_typed_is_text_wherever_it_appears(person: httpx.AsyncClient, db: Database) -> None:
    name = '<script>alert("x")</script><b onmouseover=alert(1)>'
    song = await make_song(db, name=name, artist="<i>Evil</i> & Co")

    for path in ["/?q=" + name, f"/ui/songs/{song['id']}", "/ui/artists", "/?artist=<i>Evil</i> %26 Co"]:
        page = await person.get(path)

        assert page.status_code == 200, path
        assert "<script>alert" not in page.text
        assert "<b onmouseover" not in page.text
        assert "<i>Evil" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in (await person.get(f"/ui/songs/{song['id']}")).text


async def test_the_first_page_is_light(person: httpx.AsyncClient, db: Database) -> None:
    for number in range(50):
        await make_song(db, name=f"A song with a fairly ordinary name {number}", artist="An Artist", year=1990)

    page = await person.get("/")
    assets = [await person.get(path) for path in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text)]

    assert len(assets) == 2
    assert all(asset.status_code == 200 for asset in assets)
    total = len(page.content) + sum(len(asset.content) for asset in assets)
    assert total < 30 * 1024, total  # uncompressed: HTML, CSS and JS


async def test_the_search_is_the_apis(person: httpx.AsyncClient, db: Database) -> None:
    await make_song(db, name="Yesterday", artist="The Beatles", year=1965)
    await make_song(db, name="Jóga", artist="Björk", year=1997)
    await make_song(db, name="Wonderwall", artist="Oasis", year=1995)

    for q in ["beatels", "bjork", "yester"]:
        page = await person.get("/", params={"q": q})
        api = await person.get("/songs", params={"q": q})

        shown = re.findall(r'<a href="/ui/songs/(\d+)', page.text)
        assert shown == [str(song["id"]) for song in api.json()], q
        assert shown


async def test_filters_sort_count_and_paging_follow_the_api(person: httpx.AsyncClient, db: Database) -> None:
    for year in range(1960, 1990):
        await make_song(db, name=f"Song of {year}", artist="The Band", year=year)
    await make_song(db, name="Other", artist="Someone Else", year=1970)

    seen: list[str] = []
    url: str | None = "/?artist=the+band&year_from=1965&year_to=1984&sort=-year&limit=7&count=exact"
    while url:
        page = await person.get(url)
        assert page.status_code == 200
        if not seen:
            assert "20 songs match." in page.text
        seen += re.findall(r">Song of (\d{4})<", page.text)
        found = re.search(r'<a class="more" href="([^"]+)"', page.text)
        url = unescape(found[1]) if found else None

    assert seen == [str(year) for year in range(1984, 1964, -1)]


async def test_a_fragment_is_the_part_the_script_asked_for(person: httpx.AsyncClient, db: Database) -> None:
    for number in range(3):
        await make_song(db, name=f"Track {number}", artist="Band")

    results = await person.get("/?limit=2", headers={"X-Songbook-Fragment": "results"})
    more_url = unescape(re.findall(r'<a class="more" href="([^"]+)"', results.text)[0])
    rows = await person.get(more_url, headers={"X-Songbook-Fragment": "rows"})

    assert results.text.startswith('<section id="results"')
    assert "<html" not in results.text
    assert count_songs(results.text) == 2
    assert count_songs(rows.text) == 1
    assert 'id="paging"' in rows.text
    assert "More songs" not in rows.text


async def test_invalid_filters_are_shown_at_their_field(person: httpx.AsyncClient) -> None:
    page = await person.get("/?year_from=12&sort=colour")

    assert page.status_code == 422
    assert re.search(r'id="year_from"[^>]*aria-invalid="true"', page.text)
    assert "greater than or equal to 1860" in page.text
    foreign = await person.get("/?cursor=bm90LW91cnM")
    assert foreign.status_code == 422
    assert "cursor" in foreign.text


async def test_the_export_links_carry_the_search(person: httpx.AsyncClient, db: Database) -> None:
    await make_song(db, name="Yesterday", artist="The Beatles", year=1965)
    await make_song(db, name="Wonderwall", artist="Oasis", year=1995)

    page = await person.get("/?artist=oasis&sort=name")
    link = unescape(re.findall(r'href="(/ui/export\.csv[^"]*)"', page.text)[0])
    exported = await person.get(link)
    ndjson = await person.get(link.replace(".csv", ".ndjson"))

    assert "sort" not in link
    assert exported.headers["content-type"] == "text/csv; charset=utf-8"
    assert exported.text.splitlines()[1:] == [line for line in exported.text.splitlines()[1:] if "Oasis" in line]
    assert len(exported.text.splitlines()) == 2
    assert [json.loads(line)["name"] for line in ndjson.text.splitlines()] == ["Wonderwall"]


async def test_an_export_link_with_invalid_filters_is_refused_as_the_api_refuses_them(
    person: httpx.AsyncClient,
) -> None:
    for query in ["year=abc", "q=%01", "artist=" + "x" * 300]:
        answer = await person.get(f"/ui/export.csv?{query}")

        assert answer.status_code == 422, query
        assert answer.headers["content-type"].startswith("text/html")
        field = query.split("=")[0]
        assert f'<p class="error">{field}: ' in answer.text, query  # the field, and what is wrong with it


async def test_the_artists_view_counts_filters_and_links(person: httpx.AsyncClient, db: Database) -> None:
    for number in range(3):
        await make_song(db, name=f"Song {number}", artist="Björk")
    await make_song(db, name="Yesterday", artist="The Beatles")

    page = await person.get("/ui/artists?prefix=bjo")

    assert re.search(r'<a href="/\?artist=Bj%C3%B6rk">Björk</a></td><td>3</td>', page.text)
    assert "The Beatles" not in page.text


async def test_a_song_page_shows_its_fields_and_the_way_back(person: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db, name="Yesterday", artist="The Beatles", year=1965)

    page = await person.get(f"/ui/songs/{song['id']}", params={"back": "q=beatels&sort=name"})

    assert "<h1>Yesterday</h1>" in page.text
    assert "1965" in page.text
    assert f'datetime="{song["created_at"].isoformat()}"' in page.text
    assert 'href="/?q=beatels&amp;sort=name">Back to the search' in page.text
    elsewhere = await person.get(f"/ui/songs/{song['id']}", params={"back": "next=//evil.example&q=x"})
    assert 'href="/?q=x">Back' in elsewhere.text


async def test_a_missing_song_or_page_is_a_404_page(person: httpx.AsyncClient, db: Database) -> None:
    await make_song(db)  # song 1: its id written otherwise is no page of it
    # Past any id (the page's URL takes any number): a 404 as well.
    for path in [
        "/ui/songs/999",
        "/ui/nothing",
        "/ui/songs/abc",
        f"/ui/songs/{2**31}",
        "/ui/songs/" + "9" * 20,
        "/ui/songs/01",
        "/ui/songs/0001/edit",
    ]:
        page = await person.get(path)

        assert page.status_code == 404, path
        assert page.headers["content-type"].startswith("text/html")
        assert "Not Found" in page.text
    assert "No song has id 999." in (await person.get("/ui/songs/999")).text


async def test_the_cookie_is_signed_http_only_and_same_site_strict(app: FastAPI) -> None:
    key = await make_key(app, "write")
    async with browser(app, "https://songbook.test") as client:
        answer = await sign_in(client, key)

    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" in cookie
    assert key not in answer.headers["location"]
    async with browser(app) as plain:
        assert "Secure" not in (await plain.get("/")).headers["set-cookie"]


async def test_a_forged_cookie_is_no_sign_in(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)
    cookie = person.cookies["songbook_session"]
    person.cookies.set("songbook_session", cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"))

    page = await person.get("/ui/songs/new")

    assert page.status_code == 401
    assert "Sign in with an API key to change the catalog." in page.text


async def test_the_key_is_never_in_a_page_or_a_url(app: FastAPI, person: httpx.AsyncClient) -> None:
    key = await signed_in(app, person)

    for path in PAGES:
        page = await person.get(path)
        assert key not in page.text
        assert key.split("_", 2)[2] not in page.text  # the secret, whole
    assert "Signed in as" in page.text


async def test_signing_in_with_a_bad_key_says_so(person: httpx.AsyncClient) -> None:
    answer = await sign_in(person, "sb_nothing_really")

    assert answer.status_code == 401
    assert "not a valid key" in answer.text


async def test_signing_in_goes_back_to_a_page_of_this_site_only(app: FastAPI, person: httpx.AsyncClient) -> None:
    key = await make_key(app, "write")
    for target, landing in [("/ui/import", "/ui/import"), ("//evil.example/", "/"), ("https://evil.example", "/")]:
        answer = await person.post("/ui/sign-in", data={"token": await token(person), "key": key, "next": target})

        assert answer.headers["location"] == landing


async def test_signing_out_forgets_the_key(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)

    answer = await person.post("/ui/sign-out", data={"token": await token(person, "/")})

    assert answer.status_code == 303
    page = await person.get("/")
    assert "Signed in as" not in page.text
    assert (await person.get("/ui/songs/new")).status_code == 401


async def test_a_form_without_its_token_changes_nothing(app: FastAPI, person: httpx.AsyncClient, db: Database) -> None:
    await signed_in(app, person)
    song = {"name": "Yesterday", "artist": "The Beatles", "year": "1965"}

    without = await person.post("/ui/songs/new", data=song)
    wrong = await person.post("/ui/songs/new", data=song | {"token": "guessed"})
    cross_site = await person.post(
        "/ui/songs/new", data=song | {"token": await token(person, "/")}, headers={"Sec-Fetch-Site": "cross-site"}
    )

    assert [without.status_code, wrong.status_code, cross_site.status_code] == [403, 403, 403]
    assert "nothing was changed" in cross_site.text
    assert (await person.get("/songs")).json() == []


async def test_changing_needs_a_write_key(app: FastAPI, person: httpx.AsyncClient, db: Database) -> None:
    form = {"token": await token(person), "name": "Yesterday", "artist": "The Beatles", "year": ""}

    signed_out = await person.post("/ui/songs/new", data=form)
    await signed_in(app, person, "read")
    reader = await person.post("/ui/songs/new", data=form | {"token": await token(person, "/")})

    assert signed_out.status_code == 401
    assert reader.status_code == 403
    assert "has the read scope; this needs write" in reader.text
    assert (await person.get("/songs")).json() == []


async def test_adding_a_song_shows_every_error_at_its_field(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)

    answer = await person.post(
        "/ui/songs/new", data={"token": await token(person, "/"), "name": " ", "artist": "x" * 201, "year": "1700"}
    )

    assert answer.status_code == 422
    for field in ["name", "artist", "year"]:
        assert re.search(rf'id="{field}"[^>]*aria-invalid="true"', answer.text, re.DOTALL), field
    assert "String should have at least 1 character" in answer.text
    assert "String should have at most 200 characters" in answer.text
    assert "greater than or equal to 1860" in answer.text
    assert 'value="' + "x" * 201 + '"' in answer.text  # what the person typed is kept


async def test_a_year_of_other_digits_is_an_error_at_its_field(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)

    for year in ["1965\u00b2", "\u0661\u0669\u0666\u0665", "9" * 5000]:
        form = {"token": await token(person, "/"), "name": "Yesterday", "artist": "The Beatles", "year": year}
        answer = await person.post("/ui/songs/new", data=form)

        assert answer.status_code == 422, year
        assert re.search(r'id="year"[^>]*aria-invalid="true"', answer.text, re.DOTALL), year
    assert (await person.get("/songs")).json() == []


async def test_a_duplicate_links_to_the_song_there(app: FastAPI, person: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db, name="Yesterday", artist="The Beatles")
    await signed_in(app, person)

    answer = await person.post(
        "/ui/songs/new", data={"token": await token(person, "/"), "name": "yesterday", "artist": "THE BEATLES"}
    )

    assert answer.status_code == 409
    assert f'<a href="/ui/songs/{song["id"]}">see song {song["id"]}</a>' in answer.text


async def test_an_edit_carries_the_version_it_was_made_on(
    app: FastAPI, person: httpx.AsyncClient, db: Database
) -> None:
    song = await make_song(db, name="Yesterday", artist="The Beatles", year=1965)
    await signed_in(app, person)
    form = await person.get(f"/ui/songs/{song['id']}/edit")
    assert 'name="version" value="1"' in form.text
    other = {"Authorization": f"Bearer {await make_key(app, 'write')}"}
    await person.patch(f"/songs/{song['id']}", json={"year": 1966}, headers=other)  # someone else, meanwhile
    mine = {"token": TOKEN.findall(form.text)[0], "version": "1", "name": "Yesterday", "artist": "The Beatles"}

    stale = await person.post(f"/ui/songs/{song['id']}/edit", data=mine | {"year": "1967"})

    assert stale.status_code == 412
    assert "Nothing was overwritten" in stale.text
    assert "<td>1966</td><td>1967</td>" in stale.text
    assert 'name="version" value="2"' in stale.text
    assert (await person.get(f"/songs/{song['id']}")).json()["year"] == 1966
    redone = await person.post(f"/ui/songs/{song['id']}/edit", data=mine | {"year": "1967", "version": "2"})
    assert redone.status_code == 303
    assert (await person.get(f"/songs/{song['id']}")).json()["year"] == 1967


@pytest.mark.parametrize("year", ["1967", "nineteen"])  # a valid edit, and one that is not
async def test_an_edit_of_a_song_deleted_meanwhile_keeps_what_was_typed(
    app: FastAPI, person: httpx.AsyncClient, db: Database, year: str
) -> None:
    song = await make_song(db, name="Yesterday", artist="The Beatles", year=1965)
    await signed_in(app, person)
    form = await person.get(f"/ui/songs/{song['id']}/edit")
    await execute(db, f"DELETE FROM song WHERE id = {song['id']}")  # someone else, meanwhile
    mine = {"token": TOKEN.findall(form.text)[0], "version": "1", "name": "Yesterday (live)", "artist": "The Beatles"}

    answer = await person.post(f"/ui/songs/{song['id']}/edit", data=mine | {"year": year})

    assert answer.status_code == 404
    assert f"Song {song['id']} was deleted while you were editing it" in answer.text
    assert '<form method="post" action="/ui/songs/new"' in answer.text
    assert 'value="Yesterday (live)"' in answer.text
    assert f'value="{year}"' in answer.text
    assert (await person.get("/songs")).json() == []


async def test_a_delete_is_confirmed_and_refused_if_the_song_changed(
    app: FastAPI, person: httpx.AsyncClient, db: Database
) -> None:
    song = await make_song(db)
    await signed_in(app, person)
    confirm = await person.get(f"/ui/songs/{song['id']}/delete")
    form = {"token": TOKEN.findall(confirm.text)[0], "version": "1"}
    await execute(db, "UPDATE song SET version = 2")

    refused = await person.post(f"/ui/songs/{song['id']}/delete", data=form)
    deleted = await person.post(f"/ui/songs/{song['id']}/delete", data=form | {"version": "2"})

    assert refused.status_code == 412
    assert "Nothing was deleted" in refused.text
    assert deleted.status_code == 303
    assert (await person.get(f"/songs/{song['id']}")).status_code == 404


async def upload(client: httpx.AsyncClient, name: str, content: bytes, **fields: str) -> httpx.Response:
    data = {"token": await token(client, "/ui/import")} | fields
    return await client.post("/ui/import", data=data, files={"file": (name, content)})


async def test_an_upload_imports_the_good_rows_and_lists_the_bad(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)
    csv = b"name,artist,year\nYesterday,The Beatles,1965\n,Nobody,1970\nWonderwall,Oasis,1995\n"

    answer = await upload(person, "songs.csv", csv)

    assert answer.status_code == 200
    assert "2 songs added" in answer.text
    assert "1 rejected" in answer.text
    assert re.search(r"<td>3</td><td>[^<]*name", answer.text)
    names = sorted(song["name"] for song in (await person.get("/songs")).json())
    assert names == ["Wonderwall", "Yesterday"]


async def test_an_upload_follows_the_conflict_rule(app: FastAPI, person: httpx.AsyncClient, db: Database) -> None:
    song = await make_song(db, name="Yesterday", artist="The Beatles", year=1965)
    await signed_in(app, person)
    ndjson = b'{"name": "Yesterday", "artist": "The Beatles", "year": 1966}\n'

    answer = await upload(person, "songs.ndjson", ndjson, on_conflict="update")
    refused = await upload(person, "songs.ndjson", ndjson, on_conflict="error")

    assert "1 updated" in answer.text
    assert (await person.get(f"/songs/{song['id']}")).json()["year"] == 1966
    assert "1 rejected" in refused.text
    assert f'<a href="/ui/songs/{song["id"]}">song {song["id"]}</a>' in refused.text


async def test_the_page_shows_an_import_as_it_runs(
    app: FastAPI, person: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await signed_in(app, person)
    monkeypatch.setattr(pages, "PROGRESS_EVERY_SECONDS", 0.001)
    csv = "name,artist\n" + "".join(f"Song {n},Band {n % 97}\n" for n in range(30_000))

    answer = await upload(person, "songs.csv", csv.encode())

    progress = re.findall(r"<p>(Read [^<]*)</p>", answer.text)
    assert progress  # at least one line while it ran, before the outcome
    assert answer.text.index(progress[0]) < answer.text.index('id="import-done"')
    assert "30,000 songs added" in answer.text


async def test_a_broken_file_imports_nothing(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)
    rows = ",".join(json.dumps({"name": f"Song {n}", "artist": "Band"}) for n in range(30_000))

    answer = await upload(person, "songs.json", f"[{rows}, {{broken".encode())

    assert "nothing was imported" in answer.text
    assert 'id="import-failed"' in answer.text
    assert (await person.get("/songs")).json() == []


async def test_a_file_whose_header_is_not_utf8_is_named_as_such(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)

    answer = await upload(person, "songs.csv", "titre,artiste,année\nA,B,2000\n".encode("latin-1"))

    assert "line 1: the header is not UTF-8" in answer.text
    assert 'id="import-failed"' in answer.text
    assert (await person.get("/songs")).json() == []


async def test_an_import_failed_by_the_service_says_so_and_is_logged(
    app: FastAPI, person: httpx.AsyncClient, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    if db.dialect != "postgresql":
        pytest.skip("SQLite's errors here are OperationalErrors: the database not answering, as the API says")
    await signed_in(app, person)
    # A statement the service should not have sent, as a bug would: a column of its vocabulary gone.
    await execute(db, "ALTER TABLE search_term RENAME COLUMN term TO term_gone")
    try:
        answer = await upload(person, "songs.csv", b"name,artist\nYesterday,The Beatles\n")
    finally:
        await execute(db, "ALTER TABLE search_term RENAME COLUMN term_gone TO term")

    assert "The import failed by a fault of the service (it is logged); nothing was imported." in unescape(answer.text)
    assert "not answering" not in answer.text
    assert [record.exc_info is not None for record in caplog.records if "the import of" in record.message] == [True]
    assert (await person.get("/songs")).json() == []


async def test_an_error_page_still_shows_who_is_signed_in(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)

    missing = await person.get("/ui/songs/999999")
    refused = await person.get("/ui/export.csv?year=abc")

    for page in (missing, refused):
        assert page.status_code in (404, 422)
        assert "Signed in as" in page.text
        assert 'href="/ui/songs/new"' in page.text


async def test_an_upload_needs_a_file_of_a_known_format(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)

    unknown = await upload(person, "songs.txt", b"name,artist\n")
    empty = await person.post("/ui/import", data={"token": await token(person, "/ui/import")})

    assert unknown.status_code == 422
    assert "Cannot tell the format" in unknown.text
    assert empty.status_code == 422
    assert "Choose a CSV, NDJSON or JSON file." in empty.text


async def test_an_upload_over_the_limit_is_a_page_that_says_so(settings: Settings) -> None:
    application = create_app(settings.model_copy(update={"max_upload_bytes": 2048}))
    async with LifespanManager(application), browser(application) as client:
        await signed_in(application, client)
        answer = await upload(client, "songs.csv", b"name,artist\n" + b"A song,A band\n" * 500)

    assert answer.status_code == 413
    assert answer.headers["content-type"].startswith("text/html")
    assert "The request body is larger than 2048 bytes." in answer.text


async def test_reading_can_need_a_key(settings: Settings) -> None:
    application = create_app(settings.model_copy(update={"require_read_key": True}))
    async with LifespanManager(application), browser(application) as client:
        refused = await client.get("/?q=x")
        assert refused.status_code == 401
        assert 'name="next" value="/?q=x"' in refused.text
        await signed_in(application, client, "read")
        assert (await client.get("/?q=x")).status_code == 200


@pytest.mark.parametrize("reads_need_a_key", [False, True])
async def test_a_song_links_to_its_json_only_where_a_link_can_read_it(
    settings: Settings, reads_need_a_key: bool
) -> None:
    application = create_app(settings.model_copy(update={"require_read_key": reads_need_a_key}))
    async with LifespanManager(application), browser(application) as client:
        await empty_catalog(application.state.database.engine)
        await signed_in(application, client, "read")
        song = await make_song(application.state.database, name="Yesterday", artist="The Beatles")

        page = await client.get(f"/ui/songs/{song['id']}")
        linked = re.search(r'<a href="(/songs/\d+)">as JSON</a>', page.text)
        followed = await client.get(linked.group(1)) if linked else None

    assert page.status_code == 200
    if reads_need_a_key:
        assert linked is None
        assert f"as JSON, with your key: <code>GET /songs/{song['id']}</code>" in page.text
    else:
        assert followed is not None
        assert followed.json()["name"] == "Yesterday"


async def test_a_revoked_key_signs_the_person_out(app: FastAPI, person: httpx.AsyncClient, db: Database) -> None:
    await signed_in(app, person)
    await execute(db, "UPDATE api_key SET revoked_at = created_at")
    app.state.keyring = type(app.state.keyring)()  # as another instance, which never saw the key

    page = await person.get("/")

    assert "Your key is no longer valid" in page.text
    assert "Signed in as" not in page.text
    assert (await person.get("/ui/songs/new")).status_code == 401


async def test_a_sign_in_needed_to_save_an_edit_keeps_what_was_typed(
    app: FastAPI, person: httpx.AsyncClient, db: Database
) -> None:
    song = await make_song(db, name="Yesterday", artist="The Beatles", year=1965)
    await signed_in(app, person)
    form = await person.get(f"/ui/songs/{song['id']}/edit?back=q%3Dyes")
    await execute(db, "UPDATE api_key SET revoked_at = created_at")  # signed out meanwhile
    app.state.keyring = type(app.state.keyring)()
    mine = {"token": TOKEN.findall(form.text)[0], "version": "1", "back": "q=yes", "artist": "The Beatles"}

    refused = await person.post(f"/ui/songs/{song['id']}/edit", data=mine | {"name": "Yesterday (live)", "year": ""})
    then = unescape(re.findall(r'name="next" value="([^"]*)"', refused.text)[0])
    signed = await person.post(
        "/ui/sign-in", data={"token": await token(person), "key": await make_key(app, "write"), "next": then}
    )
    again = await person.get(signed.headers["location"])

    assert refused.status_code == 401
    assert 'value="Yesterday (live)"' in again.text
    assert 'name="version" value="1"' in again.text  # the version the change was made on
    assert 'name="back" value="q=yes"' in again.text  # the search to go back to
    assert 'id="year" name="year" value=""' in again.text
    saved = await person.post(
        f"/ui/songs/{song['id']}/edit", data={"token": TOKEN.findall(again.text)[0], **parse_qs_one(then)}
    )
    assert saved.status_code == 303
    assert (await person.get(f"/songs/{song['id']}")).json()["name"] == "Yesterday (live)"


async def test_a_sign_in_needed_to_add_a_song_keeps_what_was_typed(app: FastAPI, person: httpx.AsyncClient) -> None:
    await signed_in(app, person)
    form = {"token": await token(person, "/"), "name": "Halo", "artist": "Beyoncé", "year": "2008"}
    await person.post("/ui/sign-out", data={"token": form["token"]})

    refused = await person.post("/ui/songs/new", data=form | {"token": await token(person)})
    then = unescape(re.findall(r'name="next" value="([^"]*)"', refused.text)[0])
    signed = await person.post(
        "/ui/sign-in", data={"token": await token(person), "key": await make_key(app, "write"), "next": then}
    )
    again = await person.get(signed.headers["location"])

    assert refused.status_code == 401
    assert all(f'value="{value}"' in again.text for value in ("Halo", "Beyoncé", "2008"))
    assert (await person.get("/songs")).json() == []


async def test_a_sign_in_needed_to_save_an_edit_of_a_song_deleted_meanwhile_keeps_what_was_typed(
    app: FastAPI, person: httpx.AsyncClient, db: Database
) -> None:
    song = await make_song(db, name="Yesterday", artist="The Beatles")
    await signed_in(app, person)
    then = f"/ui/songs/{song['id']}/edit?name=Yesterday+%28live%29&artist=The+Beatles&version=1"  # as a sign-in leads
    await execute(db, f"DELETE FROM song WHERE id = {song['id']}")

    page = await person.get(then)

    assert page.status_code == 404
    assert f"Song {song['id']} was deleted while you were editing it" in page.text
    assert 'value="Yesterday (live)"' in page.text


def parse_qs_one(url: str) -> dict[str, str]:
    """The query of `url`, one value a name."""
    return dict(parse_qsl(urlsplit(url).query))


def test_the_session_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    data = tmp_path
    first = web.session_secret(Settings(data_dir=data))
    again = web.session_secret(Settings(data_dir=data))

    assert first == again
    assert len(first) >= 32
    assert (data / web.SECRET_FILE).stat().st_mode & 0o077 == 0
    assert web.session_secret(Settings(data_dir=data, session_secret="s" * 32)) == "s" * 32


async def test_a_song_past_the_last_id_is_a_page_that_says_so(
    app: FastAPI, person: httpx.AsyncClient, db: Database
) -> None:
    rows = [RawRow(1, {"id": ID_MAX, "name": "The Last", "artist": "Brought"})]
    await songs.import_songs(db=db, sources=[("songs.ndjson", rows)])
    await signed_in(app, person)

    form = {"token": await token(person, "/"), "name": "One More", "artist": "Band"}
    answer = await person.post("/ui/songs/new", data=form)

    assert answer.status_code == 409
    assert answer.headers["content-type"].startswith("text/html")
    assert "no song ids left" in answer.text
    assert len((await person.get("/songs")).json()) == 1
