"""Following a listing's pages, as a client would."""

import re
from typing import Any

import httpx


def next_link(response: httpx.Response) -> str | None:
    """The URL of `Link: <...>; rel="next"`, or None on the last page."""
    match = re.fullmatch(r'<([^>]+)>; rel="next"', response.headers.get("link", ""))
    return match.group(1) if match else None


def next_cursor(response: httpx.Response) -> str:
    """The cursor of the next page's link (there must be one)."""
    link = next_link(response)
    assert link is not None, "no next page"
    found = re.search(r"cursor=([^&]+)", link)
    assert found is not None, link
    return found.group(1)


async def walk(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    """Every item of a listing, page after page, following the next links."""
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        items += response.json()
        next_url = next_link(response)
    return items
