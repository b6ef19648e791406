"""The interactive docs work offline: every asset is songbook's own, under a policy that allows exactly those."""

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.server import serving

PAGES = ["/docs", "/redoc"]
REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']*)["']""")
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
CHROMIUM = shutil.which("chromium")


@pytest.mark.parametrize("page", PAGES)
async def test_a_docs_page_references_nothing_outside_the_service(anonymous: httpx.AsyncClient, page: str) -> None:
    response = await anonymous.get(page)
    html = response.text
    references = REFERENCE.findall(html)

    assert response.status_code == 200
    assert references
    assert not re.search(r"https?:|//[\w.-]+\.\w", html), "an address outside the service"
    for reference in references:
        assert reference.startswith("/"), reference
        assert not reference.startswith("//"), reference
        asset = await anonymous.get(reference)
        assert asset.status_code == 200, reference
        assert not re.search(rb"""(?:src|href)=["']https?://""", asset.content), reference


@pytest.mark.parametrize("page", [*PAGES, "/docs/oauth2-redirect"])
async def test_the_policy_allows_the_services_scripts_and_the_pages_own(
    anonymous: httpx.AsyncClient, page: str
) -> None:
    response = await anonymous.get(page)
    policy = dict(
        directive.strip().split(" ", 1) for directive in response.headers["content-security-policy"].split(";")
    )
    inline = [
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in INLINE_SCRIPT.findall(response.text)
    ]

    assert policy["default-src"] == "'none'"
    assert policy["script-src"].split() == ["'self'", *inline]
    assert policy["frame-ancestors"] == "'none'"
    assert not any("http" in sources or "*" in sources for sources in policy.values())
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian's chromium package; .ci/run installs it)")
@pytest.mark.parametrize(("page", "rendered"), [("/docs", 'class="title">Songbook'), ("/redoc", ">Songbook")])
def test_chromium_renders_the_docs_without_the_network(catalog: URL, tmp_path: Path, page: str, rendered: str) -> None:
    assert CHROMIUM is not None
    with serving(tmp_path, {"SONGBOOK_LOG_LEVEL": "warning"}) as server:
        browser = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=15000",
                "--dump-dom",
                server.base + page,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    console = [line for line in browser.stderr.splitlines() if ":CONSOLE" in line]

    assert rendered in browser.stdout  # drawn by the page's scripts, from the service's own files
    assert "/songs/{song_id}" in browser.stdout
    # Nothing of the service's own was refused; what the bundles would fetch from outside is.
    assert not [line for line in console if "script-src" in line or "style-src" in line or "Refused" in line]
