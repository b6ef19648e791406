"""The web page in a real browser: Debian's Chromium, driven by Playwright, against a real `songbook serve`.

Nothing here downloads a browser: without `/usr/bin/chromium` (apt-get install
chromium) these tests are skipped, and say so. Each saves screenshots (390 and
1280 px wide for the main views) in a temporary folder; `make screenshots` makes
those of docs/screenshots/ again (SONGBOOK_SCREENSHOTS names the folder).
"""

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright
from sqlalchemy.engine import URL

from app.config import Settings
from tests.catalog import empty, new_key
from tests.server import Server, serving

CHROMIUM = shutil.which("chromium")
# Chromium as root, headless, with nothing of its own reaching out to the network.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("SONGBOOK_SCREENSHOTS") or Path(tempfile.gettempdir()) / "songbook-screenshots")
WIDE, NARROW = 1280, 390


@pytest.fixture(scope="module")
def served(database_url: URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `songbook serve` for the module's tests on each backend; each test empties its catalog."""
    env = {"DATABASE_URL": database_url.render_as_string(hide_password=False)}
    with serving(tmp_path_factory.mktemp("site"), env) as server:
        yield server


@pytest.fixture(scope="module")
def chromium(served: Server) -> Iterator[Browser]:
    """Started after the site, whose database is migrated with asyncio (see `site`)."""
    if CHROMIUM is None:
        pytest.skip("the browser tests need Debian's Chromium (apt-get install chromium); skipped")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@dataclass
class Site:
    """A running songbook over an empty catalog, a write key for it, and the backend's name, for the screenshots."""

    base: str
    key: str
    backend: str

    def add(self, *songs: dict[str, Any]) -> list[dict[str, Any]]:
        """Songs added through the API, as another client would."""
        answer = httpx.post(f"{self.base}/songs/batch", json=list(songs), headers=self.auth, timeout=30)
        assert answer.status_code == 200, answer.text
        return [{"id": item["id"]} | song for item, song in zip(answer.json()["items"], songs, strict=True)]

    def api(self, method: str, path: str, **options: Any) -> httpx.Response:
        return httpx.request(method, f"{self.base}{path}", headers=self.auth, timeout=30, **options)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def site(served: Server, chromium: Browser, database_url: URL, tmp_path: Path) -> Site:
    # Playwright's synchronous API keeps an event loop running in this thread while the
    # browser is open: what needs asyncio of its own runs in another.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(empty, database_url).result()
        settings = Settings(database_url=database_url.render_as_string(hide_password=False), data_dir=tmp_path)
        key = thread.submit(new_key, settings, "write").result()
    return Site(served.base, key, database_url.get_backend_name())


@pytest.fixture
def page(chromium: Browser, site: Site) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": WIDE, "height": 900})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def plain_page(chromium: Browser, site: Site) -> Iterator[Page]:
    """A browser with JavaScript off."""
    context = chromium.new_context(viewport={"width": WIDE, "height": 900}, java_script_enabled=False)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def shoot(page: Page, site: Site, name: str, *, narrow: bool = False) -> None:
    """Saves the page as it looks, at 1280 px wide (and 390 if `narrow`), and checks it never scrolls sideways."""
    widths = [WIDE, NARROW] if narrow else [WIDE]
    for width in widths:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=SCREENSHOTS / f"{name}-{width}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} scrolls sideways at {width}"
    page.set_viewport_size({"width": WIDE, "height": 900})


def sign_in(page: Page, site: Site, key: str | None = None) -> None:
    page.goto(f"{site.base}/ui/sign-in")
    page.get_by_label("API key").fill(key or site.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Signed in as")).to_be_visible()


def song_links(page: Page) -> list[str]:
    paths = page.locator("#rows tr td:first-child a").evaluate_all("links => links.map(link => link.pathname)")
    return [str(path) for path in paths]


def test_a_search_with_a_typo_finds_the_song_as_the_person_types(page: Page, site: Site) -> None:
    site.add(
        {"name": "Yesterday", "artist": "The Beatles", "year": 1965},
        {"name": "Wonderwall", "artist": "Oasis", "year": 1995},
        {"name": "Jóga", "artist": "Björk", "year": 1997},
    )
    page.goto(site.base)
    expect(page.locator("#rows tr")).to_have_count(3)

    page.get_by_label("Search songs and artists").press_sequentially("beatels", delay=80)

    expect(page.locator("#rows tr")).to_have_count(1)
    expect(page.locator("#rows")).to_contain_text("Yesterday")
    expect(page).to_have_url(re.compile(r"/\?q=beatels$"))
    shoot(page, site, "search", narrow=True)
    page.go_back()  # the search before: the whole catalog
    expect(page.locator("#rows tr")).to_have_count(3)
    expect(page.get_by_label("Search songs and artists")).to_have_value("")
    page.goto(f"{site.base}/?q=bjork")  # a bookmark, shared or reloaded
    expect(page.locator("#rows")).to_contain_text("Jóga")


def test_a_filter_the_search_refuses_is_shown_beside_it_as_the_person_types(page: Page, site: Site) -> None:
    site.add({"name": "Yesterday", "artist": "The Beatles", "year": 1965})
    page.goto(site.base)
    page.get_by_text("Filters and order").click()

    page.get_by_label("Year", exact=True).fill("1700")

    expect(page.locator("#year-error")).to_contain_text("greater than or equal to 1860")
    expect(page.get_by_label("Year", exact=True)).to_have_attribute("aria-invalid", "true")
    shoot(page, site, "filter-refused", narrow=True)
    page.get_by_label("Year", exact=True).fill("1965")
    expect(page.locator("#rows tr")).to_have_count(1)
    expect(page.locator("#year-error")).to_have_count(0)
    expect(page.get_by_label("Year", exact=True)).not_to_have_attribute("aria-invalid", "true")


def test_paging_to_the_end_visits_every_match_once(page: Page, site: Site) -> None:
    site.add(*({"name": f"Track {number:03}", "artist": "Paging Band"} for number in range(120)))
    site.add({"name": "Elsewhere", "artist": "Another Band"})
    page.goto(f"{site.base}/?artist=paging+band&sort=-name&count=exact")
    expect(page.get_by_text("120 songs match.")).to_be_visible()

    shown = 50
    while page.locator("a.more").count():
        page.locator("a.more").focus()
        page.keyboard.press("Enter")
        shown = min(shown + 50, 120)
        expect(page.locator("#rows tr")).to_have_count(shown)
        # The keyboard goes on from the first song added, not from the top of the page.
        expect(page.locator(f"#rows tr:nth-child({shown - (shown - 1) % 50}) a").first).to_be_focused()

    links = song_links(page)
    assert len(links) == 120
    assert len(set(links)) == 120
    names = page.locator("#rows tr td:first-child").all_inner_texts()
    assert names == [f"Track {number:03}" for number in range(119, -1, -1)]
    shoot(page, site, "paged")


def test_a_sort_from_a_link_is_shown_and_kept_and_a_long_key_name_fits_a_phone(
    page: Page, site: Site, database_url: URL, tmp_path: Path
) -> None:
    site.add({"name": "Song A", "artist": "Band B", "year": 2001}, {"name": "Song B", "artist": "Band A", "year": 1999})
    settings = Settings(database_url=database_url.render_as_string(hide_password=False), data_dir=tmp_path)
    name = "alexandra.konstantinopoulou@example.com-catalog-importer"
    with ThreadPoolExecutor(1) as thread:  # asyncio of its own, beside Playwright's (see `site`)
        key = thread.submit(new_key, settings, "write", name).result()
    sign_in(page, site, key)
    page.goto(f"{site.base}/?q=song&sort=artist,-year")

    expect(page.get_by_label("Order")).to_have_value("artist,-year")
    page.get_by_label("Search songs and artists").press_sequentially("s", delay=80)
    expect(page).to_have_url(re.compile(r"sort=artist%2C-year"))
    expect(page.locator("#rows tr td:first-child")).to_have_text(["Song B", "Song A"])
    shoot(page, site, "long-key-name", narrow=True)  # nothing scrolls sideways at 390 px


def test_search_and_paging_without_javascript(plain_page: Page, site: Site) -> None:
    site.add(*({"name": f"Holiday {number:02}", "artist": "Plain Band"} for number in range(60)))
    site.add({"name": "Yesterday", "artist": "The Beatles"})
    page = plain_page
    page.goto(site.base)

    page.get_by_label("Search songs and artists").fill("holliday")
    page.get_by_label("Search songs and artists").press("Enter")

    expect(page).to_have_url(re.compile(r"/\?q=holliday$"))
    seen = song_links(page)
    while page.locator("a.more").count():
        page.locator("a.more").click()
        expect(page).to_have_url(re.compile(r"cursor="))
        seen += song_links(page)
    assert len(seen) == 60
    assert len(set(seen)) == 60
    shoot(page, site, "no-javascript", narrow=True)


def test_add_edit_and_delete_a_song(page: Page, site: Site) -> None:
    sign_in(page, site)
    page.get_by_role("link", name="Add a song").click()
    shoot(page, site, "add", narrow=True)
    page.get_by_label("Name").fill("Paranoid Android")
    page.get_by_label("Artist").fill("Radiohead")
    page.get_by_label("Year").fill("1997")
    page.get_by_role("button", name="Add the song").click()

    expect(page.get_by_text("The song was added.")).to_be_visible()
    expect(page.get_by_role("heading", name="Paranoid Android")).to_be_visible()
    shoot(page, site, "song", narrow=True)
    song_id = page.url.rsplit("/", 1)[1].split("?")[0]

    page.get_by_role("link", name="Edit").click()
    page.get_by_label("Year").fill("1998")
    shoot(page, site, "edit", narrow=True)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Your changes were saved.")).to_be_visible()
    assert site.api("GET", f"/songs/{song_id}").json()["year"] == 1998

    page.get_by_role("link", name="Delete").click()
    shoot(page, site, "delete", narrow=True)
    page.get_by_role("button", name="Delete it").click()
    expect(page.get_by_text("The song was deleted.")).to_be_visible()
    assert site.api("GET", f"/songs/{song_id}").status_code == 404


def test_invalid_fields_are_shown_next_to_them(page: Page, site: Site) -> None:
    sign_in(page, site)
    page.goto(f"{site.base}/ui/songs/new")

    page.get_by_label("Name").fill("   ")
    page.get_by_label("Artist").fill("Someone")
    page.get_by_label("Year").fill("1492")
    page.get_by_role("button", name="Add the song").click()

    expect(page.locator("#name-error")).to_have_text("String should have at least 1 character")
    expect(page.locator("#year-error")).to_contain_text("greater than or equal to 1860")
    expect(page.get_by_label("Artist")).to_have_value("Someone")
    shoot(page, site, "invalid", narrow=True)
    assert site.api("GET", "/songs").json() == []


def test_a_name_of_emoji_is_kept_whole_as_it_is_typed(page: Page, site: Site) -> None:
    sign_in(page, site)
    page.goto(f"{site.base}/ui/songs/new")

    page.get_by_label("Name").press_sequentially("🎵" * 120)  # 120 characters, 240 UTF-16 code units
    page.get_by_label("Artist").fill("Emoji Band")
    page.get_by_role("button", name="Add the song").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("🎵" * 120)
    assert [song["name"] for song in site.api("GET", "/songs").json()] == ["🎵" * 120]


def test_a_stale_edit_is_refused_and_shown(page: Page, site: Site) -> None:
    [song] = site.add({"name": "Yesterday", "artist": "The Beatles", "year": 1965})
    sign_in(page, site)
    page.goto(f"{site.base}/ui/songs/{song['id']}/edit")
    site.api("PATCH", f"/songs/{song['id']}", json={"name": "Yesterday (Remastered)"})  # someone else, meanwhile

    page.get_by_label("Year").fill("1966")
    page.get_by_role("button", name="Save").click()

    conflict = page.locator(".conflict")
    expect(conflict).to_contain_text("Nothing was overwritten")
    expect(conflict).to_contain_text("Yesterday (Remastered)")
    expect(conflict).to_contain_text("1966")
    assert site.api("GET", f"/songs/{song['id']}").json()["year"] == 1965
    shoot(page, site, "conflict", narrow=True)
    page.get_by_label("Name").fill("Yesterday (Remastered)")  # redone on the version there now
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Your changes were saved.")).to_be_visible()
    now = site.api("GET", f"/songs/{song['id']}").json()
    assert (now["name"], now["year"]) == ("Yesterday (Remastered)", 1966)


def test_a_duplicate_is_shown_with_a_link_to_the_song(page: Page, site: Site) -> None:
    [song] = site.add({"name": "Yesterday", "artist": "The Beatles", "year": 1965})
    sign_in(page, site)
    page.goto(f"{site.base}/ui/songs/new")

    page.get_by_label("Name").fill("YESTERDAY")
    page.get_by_label("Artist").fill("the beatles")
    page.get_by_role("button", name="Add the song").click()

    expect(page.get_by_role("alert")).to_contain_text("The catalog already has this song")
    shoot(page, site, "duplicate")
    page.get_by_role("link", name=f"see song {song['id']}").click()
    expect(page.get_by_role("heading", name="Yesterday")).to_be_visible()
    assert len(site.api("GET", "/songs").json()) == 1


def test_an_upload_with_one_bad_row_imports_the_rest_and_lists_it(page: Page, site: Site) -> None:
    sign_in(page, site)
    page.get_by_role("link", name="Import").click()
    csv = "name,artist,year\nYesterday,The Beatles,1965\nHey Jude,The Beatles,1492\nWonderwall,Oasis,1995\n"

    page.get_by_label("File", exact=True).set_input_files(
        {"name": "songs.csv", "mimeType": "text/csv", "buffer": csv.encode()}
    )
    page.get_by_role("button", name="Import").click()

    expect(page.locator("#import-done")).to_contain_text("2 songs added")
    expect(page.locator("#import-done")).to_contain_text("1 rejected")
    rejected = page.locator(".rejects tbody tr")
    expect(rejected).to_have_count(1)
    expect(rejected.locator("td").first).to_have_text("3")
    expect(rejected).to_contain_text("year")
    shoot(page, site, "import", narrow=True)
    assert sorted(song["name"] for song in site.api("GET", "/songs").json()) == ["Wonderwall", "Yesterday"]


def test_sign_in_sign_out_and_a_write_signed_out(page: Page, site: Site) -> None:
    page.goto(f"{site.base}/ui/songs/new")
    expect(page.get_by_role("alert")).to_have_text("Sign in with an API key to change the catalog.")
    shoot(page, site, "sign-in", narrow=True)
    page.get_by_label("API key").fill("sb_notakey_atall")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not a valid key")

    page.get_by_label("API key").fill(site.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{site.base}/ui/songs/new")  # back where the person was going
    expect(page.get_by_text(re.compile(r"Signed in as test write \w+ \(write\)"))).to_be_visible()
    assert site.key not in page.content()

    other = page.context.new_page()  # another tab: signs out while this one has its form open
    other.goto(site.base)
    other.get_by_role("button", name="Sign out").click()
    expect(other.get_by_role("link", name="Sign in")).to_be_visible()
    page.get_by_label("Name").fill("Written while signed out")
    page.get_by_label("Artist").fill("Nobody")
    page.get_by_role("button", name="Add the song").click()

    # Signing out made a new form token: the form of the signed-in page is refused, and writes nothing.
    expect(page.get_by_role("alert")).to_contain_text("This form has expired")
    page.goto(f"{site.base}/ui/songs/new")
    expect(page.get_by_role("alert")).to_have_text("Sign in with an API key to change the catalog.")
    assert site.api("GET", "/songs").json() == []


def test_a_song_name_with_markup_shows_as_text(page: Page, site: Site) -> None:
    name = '<script>document.title="pwned"</script><img src=x onerror="alert(1)">'
    site.add({"name": name, "artist": "Markup <b>Band</b>"})
    dialogs: list[str] = []

    def refuse(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", refuse)

    page.goto(f"{site.base}/?artist=markup+%3Cb%3Eband%3C%2Fb%3E")

    expect(page.locator("#rows tr td:first-child")).to_have_text(name)
    expect(page.locator("#rows tr td:nth-child(2)")).to_have_text("Markup <b>Band</b>")
    assert page.locator("#rows img, #rows b, #rows script").count() == 0
    page.locator("#rows tr td:first-child a").click()
    expect(page.locator("h1")).to_have_text(name)
    assert page.title() != "pwned"
    assert dialogs == []
    shoot(page, site, "markup")


def test_the_artists_view_links_to_their_songs(page: Page, site: Site) -> None:
    site.add(
        {"name": "Jóga", "artist": "Björk", "year": 1997},
        {"name": "Hyperballad", "artist": "Björk", "year": 1995},
        {"name": "Yesterday", "artist": "The Beatles", "year": 1965},
    )
    page.goto(f"{site.base}/ui/artists")

    page.get_by_label("Name starts with").fill("bjo")
    page.get_by_role("button", name="Show").click()

    expect(page.locator(".artists tbody tr")).to_have_count(1)
    expect(page.locator(".artists tbody tr")).to_contain_text("2")
    shoot(page, site, "artists", narrow=True)
    page.get_by_role("link", name="Björk").click()
    expect(page.locator("#rows tr")).to_have_count(2)


def test_the_keyboard_reaches_everything_and_shows_where_it_is(page: Page, site: Site) -> None:
    site.add({"name": "Yesterday", "artist": "The Beatles", "year": 1965})
    page.goto(site.base)

    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the content")).to_be_focused()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus is visible
    page.screenshot(path=SCREENSHOTS / "focus-1280.png")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Search songs and artists")).to_be_focused()
    page.keyboard.type("yesterdy")
    expect(page.locator("#rows tr")).to_have_count(1)
    for _ in range(40):  # on through the filters and the button to the first result
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Yesterday":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Yesterday")).to_be_visible()
