"""The web page for people: HTML adapters over the same catalog functions the API routes call.

Server-rendered (Jinja2), working without JavaScript: every search, page, edit
and delete is a plain link or form. `static/page.js` adds search as you type
and "more" without reloading, by asking for parts of the same pages (the
`X-Songbook-Fragment` header). The page's URLs are `/` and `/ui/...`, none of
the API's; they are left out of the OpenAPI description.

Errors are the API's: a route raises the catalog's `AppError`s, and `PageRoute`
renders the problem the API would answer, with the same status, as a page.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData, ImmutableMultiDict, UploadFile

from app import songs
from app.auth import check_key, needs_key
from app.checking import Rejected
from app.config import Settings, get_settings
from app.db import DATABASE_ERRORS, Database, get_database
from app.errors import (
    AppError,
    DuplicateSong,
    FileError,
    Forbidden,
    ImportAborted,
    InvalidParameter,
    MaxErrorsExceeded,
    NotFound,
    PreconditionFailed,
    database_unavailable,
)
from app.errors import Unauthorized as KeyRefused
from app.formats import Format, RawRow, format_of, read_rows
from app.importing import OnConflict, Summary
from app.keys import Caller
from app.models import ArtistQuery, Scope, SongCreate, SongQuery, SongRow
from app.routes.links import check_page_size, validate_query
from app.routes.songs import export_response
from app.web import Sessions, WebSession, get_sessions

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent.parent
STATIC_DIR = HERE / "static"
STATIC_PATH = "/ui/static"
IMPORT_PATH = "/ui/import"
FRAGMENT_HEADER = "x-songbook-fragment"
PAGE_SIZE = 50
REJECTS_SHOWN = 1000  # rows of an import's rejects listed on its page; the rest are counted
PROGRESS_EVERY_SECONDS = 0.5


class _SongIdSegment(Convertor[int]):
    """A song's id in a page's URL as the service writes it, as the API takes it: Starlette's `int` takes
    `/ui/songs/01` as song 1. Any other segment is no page (404)."""

    regex = "[1-9][0-9]*"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("song", _SongIdSegment())

# What a search's URL may hold: the filters of `GET /songs`, its sort and cursor, and `count=exact`.
SEARCH_FIELDS = ("q", "artist", "year", "year_from", "year_to", "sort", "cursor", "limit", "count")
SORTS = [
    ("", "Best match (with a search), else first added"),
    ("name", "Name, A to Z"),
    ("-name", "Name, Z to A"),
    ("artist", "Artist, A to Z"),
    ("-artist", "Artist, Z to A"),
    ("year", "Year, oldest first"),
    ("-year", "Year, newest first"),
    ("created_at", "Added, oldest first"),
    ("-created_at", "Added, newest first"),
    ("id", "Id, ascending"),
    ("-id", "Id, descending"),
]
ARTIST_SORTS = [
    ("name", "Name, A to Z"),
    ("-name", "Name, Z to A"),
    ("-songs", "Most songs"),
    ("songs", "Fewest songs"),
]
CONFLICT_RULES = [
    (OnConflict.SKIP, "Keep the song already there"),
    (OnConflict.UPDATE, "Update it with the file's spelling and year"),
    (OnConflict.ERROR, "Reject the row"),
]


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # whatever a person typed is text, wherever it appears
    enable_async=True,  # an import's page is streamed while the import runs
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when
SORT_KEYS = frozenset(key for key, _ in SORTS)  # a sort from a link outside these is shown as it is
templates.globals.update(SORTS=SORTS, SORT_KEYS=SORT_KEYS, ARTIST_SORTS=ARTIST_SORTS, CONFLICT_RULES=CONFLICT_RULES)


R = TypeVar("R", bound=Response)


class SignInNeeded(Exception):
    """What the page asked for needs a key that the person has not signed in with: 401, or 403 for too small a scope."""

    def __init__(self, status: int, message: str, then: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.then = then  # where signing in leads; by default, back to the page asked for


@dataclass
class Visit:
    """One request to the page: its session, who is signed in, and what they may do."""

    request: Request
    settings: Settings
    db: Database
    sessions: Sessions
    session: WebSession
    caller: Caller | None
    changed: bool  # the cookie is written with the response
    notice: str | None = None

    def may(self, scope: Scope) -> bool:
        return not needs_key(self.settings, scope) or (self.caller is not None and self.caller.may(scope))

    def require(self, scope: Scope, *, then: str | None = None) -> None:
        """A sign-in page unless the person may do what `scope` allows; it leads to `then`, or back here."""
        if self.may(scope):
            return
        if self.caller is None:
            verb = "read the catalog" if scope == "read" else "change the catalog"
            raise SignInNeeded(401, f"Sign in with an API key to {verb}.", then)
        caller = self.caller
        message = f"The key {caller.name!r} has the {caller.scope} scope; this needs {scope}: use another."
        raise SignInNeeded(403, message, then)

    async def form(self) -> FormData:
        """The request's form, if it comes from this site's own page (`SameSite` cookie, token, `Sec-Fetch-Site`)."""
        site = self.request.headers.get("sec-fetch-site")
        if site not in (None, "same-origin", "none"):
            raise Forbidden("This form was sent from another site; nothing was changed.")
        form = await self.request.form(max_files=1, max_fields=20)
        token = form.get("token")
        if not isinstance(token, str) or not self.session.carries(token):
            await form.close()
            raise Forbidden("This form has expired (or came from elsewhere); reload the page and send it again.")
        return form

    def sign_in(self, key: str | None) -> None:
        """From now on, the browser holds `key` (None: none); a new token with it."""
        self.session, self.changed = WebSession.new(key), True

    async def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = await templates.get_template(name).render_async(self._context(context))
        return self._finish(HTMLResponse(html, status_code=status))

    def stream(self, name: str, **context: Any) -> StreamingResponse:
        chunks = templates.get_template(name).generate_async(self._context(context))
        return self._finish(StreamingResponse(chunks, media_type="text/html; charset=utf-8"))

    def redirect(self, url: str) -> RedirectResponse:
        return self._finish(RedirectResponse(url, status_code=303))

    def _context(self, context: dict[str, Any]) -> dict[str, Any]:
        return {"visit": self, "notice": self.notice, **context}

    def _finish(self, response: R) -> R:
        response.headers["Cache-Control"] = "no-store"
        if self.changed:
            self.sessions.write(self.request, response, self.session)
        return response


async def visit(request: Request) -> Visit:
    """The page's state for this request: the session from its cookie (or a new one), and who it is signed in as."""
    settings, db, sessions = await get_settings(request), await get_database(request), await get_sessions(request)
    found = sessions.read(request)
    session = found or WebSession.new()
    try:
        caller = await check_key(request, settings, session.key)  # counted against the rate limits, as the API's
    except KeyRefused:
        notice = "Your key is no longer valid: sign in."
        page = Visit(request, settings, db, sessions, session.without_key(), None, True, notice)
    else:
        page = Visit(request, settings, db, sessions, session, caller, found is None)
    request.state.visit = page
    return page


VisitDep = Annotated[Visit, Depends(visit)]


class PageRoute(APIRoute):
    """A page's route: an error is the problem the API would answer, shown as a page with the same status."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInNeeded as exc:
                return await _sign_in_page(request, exc)
            except Exception as exc:  # rendered as the API renders it, or re-raised
                return await _problem_page(request, exc)

        return handle


router = APIRouter(include_in_schema=False, route_class=PageRoute)


def install(app: FastAPI) -> None:
    """The page at / and /ui/...: its files first, then its routes (the last of which is its 404)."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
    app.router.routes.extend(router.routes)  # as the API's routes (app.main._include_routes)


@router.get("/")
async def search_page(request: Request, visit: VisitDep) -> Response:
    """The catalog: a search box, filters, sorts, and a page of songs; or, asked by the script, a part of it."""
    visit.require("read")
    values = _search_values(request.query_params.multi_items())
    if any(not value.strip() for _, value in request.query_params.multi_items()):
        # A form sent without the script sends its empty fields too: the search's URL leaves them out.
        return visit.redirect(_url("/", values))
    errors: dict[str, str] = {}
    page, total = None, None
    try:
        query = SongQuery.model_validate({name: value for name, value in values.items() if name != "count"})
        count: Literal["exact"] | None = "exact" if values.get("count") else None
        await check_page_size(request, query)
        page = await songs.list_songs(db=visit.db, query=query, count=count)
        total = page.total
    except ValidationError as exc:
        errors = _field_errors(exc)
    except InvalidParameter as exc:
        errors = _app_field_errors(exc)
    rows = page.items if page else []
    next_url = _url("/", values | {"cursor": page.next_cursor}) if page and page.next_cursor else None
    exported = {name: value for name, value in values.items() if name not in ("cursor", "limit", "sort", "count")}
    context = {
        "values": values,
        "errors": errors,
        "songs": rows,
        "total": total,
        "next_url": next_url,
        "first_url": _url("/", values | {"cursor": None}) if "cursor" in values else None,
        "back": urlencode(values),
        "export_query": urlencode(exported),
        "deleted": request.query_params.get("deleted") is not None,
    }
    status = 422 if errors else 200
    fragment = request.headers.get(FRAGMENT_HEADER)
    if fragment == "rows":  # the next page's rows, added below those shown: no way back to the first
        return await visit.render("_more.html", status, **context | {"first_url": None})
    if fragment == "results":
        return await visit.render("_results.html", status, **context | {"fragment": True})
    return await visit.render("search.html", status, **context)


@router.get("/ui/export.{file_format}")
async def export(request: Request, file_format: Literal["csv", "ndjson"], visit: VisitDep) -> Response:
    """Every song of a search, as a file: `GET /songs` with `Accept: text/csv` (or NDJSON), for a link."""
    visit.require("read")
    values = _search_values(request.query_params.multi_items())
    # A link edited by hand is refused as the API refuses its query: 422, each field named.
    query = validate_query(SongQuery, {name: value for name, value in values.items() if name != "count"})
    return await export_response(request, visit.db, query, Format(file_format))


@router.get("/ui/artists")
async def artists_page(request: Request, visit: VisitDep) -> Response:
    """The artists, with how many songs each has, by a name's start; each links to their songs."""
    visit.require("read")
    values = {
        name: value.strip()
        for name, value in request.query_params.multi_items()
        if name in ("prefix", "sort", "cursor") and value.strip()
    }
    errors: dict[str, str] = {}
    page = None
    try:
        query = ArtistQuery.model_validate(values)
        await check_page_size(request, query)
        page = await songs.list_artists(db=visit.db, query=query)
    except ValidationError as exc:
        errors = _field_errors(exc)
    except InvalidParameter as exc:
        errors = _app_field_errors(exc)
    next_url = _url("/ui/artists", values | {"cursor": page.next_cursor}) if page and page.next_cursor else None
    return await visit.render(
        "artists.html",
        422 if errors else 200,
        values=values,
        errors=errors,
        artists=page.items if page else [],
        next_url=next_url,
        first_url=_url("/ui/artists", values | {"cursor": None}) if "cursor" in values else None,
    )


@router.get("/ui/songs/new")
async def new_song_page(request: Request, visit: VisitDep) -> Response:
    """The form to add a song; filled in with what its URL gives (what was typed before signing in)."""
    visit.require("write")
    return await visit.render("song_form.html", song=None, values=_song_values(request.query_params), errors={})


@router.post("/ui/songs/new")
async def add_song(visit: VisitDep) -> Response:
    """Adds the song of the form, or shows the form again with what is wrong (a duplicate: a link to it)."""
    form = await visit.form()
    values = _song_values(form)
    # Signed out meanwhile (the key revoked, the cookie expired): signing in leads back to what was typed.
    visit.require("write", then=_url("/ui/songs/new", values))
    try:
        song = await songs.create_song(db=visit.db, song_in=SongCreate.model_validate(_song_input(values)))
    except ValidationError as exc:
        return await visit.render("song_form.html", 422, song=None, values=values, errors=_field_errors(exc))
    except DuplicateSong as exc:
        return await visit.render(
            "song_form.html", 409, song=None, values=values, errors={}, duplicate=exc.extensions["existing_id"]
        )
    return visit.redirect(f"/ui/songs/{song['id']}?done=added")


@router.get("/ui/songs/{song_id:song}")
async def song_page(song_id: int, request: Request, visit: VisitDep) -> Response:
    """One song: its fields, when it was added and changed, and the way back to the search it came from."""
    visit.require("read")
    song = await songs.get_song(db=visit.db, song_id=song_id)
    back = _back(request.query_params.get("back", ""))
    return await visit.render(
        "song.html", song=song, back=back, back_url=_url("/", back), done=request.query_params.get("done")
    )


@router.get("/ui/songs/{song_id:song}/edit")
async def edit_song_page(song_id: int, request: Request, visit: VisitDep) -> Response:
    """The form to edit a song; with a `version`, what was typed on that version before signing in."""
    visit.require("write")
    back = _back(request.query_params.get("back", ""))
    if "version" not in request.query_params:
        song = await songs.get_song(db=visit.db, song_id=song_id)
        return await visit.render("song_form.html", song=song, values=_shown(song), errors={}, back=back)
    typed = _song_values(request.query_params)
    try:
        song = await songs.get_song(db=visit.db, song_id=song_id)
    except NotFound:  # deleted meanwhile: as the edit's own POST shows it
        return await visit.render("song_form.html", 404, song=None, values=typed, errors={}, gone=song_id)
    # Saved on the version seen, not on this one: a change made meanwhile is shown, not overwritten.
    song = song | {"version": _version(request.query_params)}
    return await visit.render("song_form.html", song=song, values=typed, errors={}, back=back)


@router.post("/ui/songs/{song_id:song}/edit")
async def edit_song(song_id: int, visit: VisitDep) -> Response:
    """Saves an edit if the song is still at the version the person saw (`If-Match`); else shows both versions.

    A song deleted meanwhile: the person's values in the form to add a song, so that nothing typed is lost.
    """
    form = await visit.form()
    values, seen, back = _song_values(form), _version(form), _back(str(form.get("back", "")))
    typed = values | {"version": str(seen), "back": urlencode(back)}
    visit.require("write", then=_url(f"/ui/songs/{song_id}/edit", typed))
    try:
        return await _save_edit(visit, song_id, values, seen, back)
    except NotFound:
        return await visit.render("song_form.html", 404, song=None, values=values, errors={}, gone=song_id)


async def _save_edit(visit: Visit, song_id: int, values: dict[str, str], seen: int, back: dict[str, str]) -> Response:
    try:
        song_in = SongCreate.model_validate(_song_input(values))
        await songs.replace_song(db=visit.db, song_id=song_id, song_in=song_in, versions={seen})
    except ValidationError as exc:
        song = await songs.get_song(db=visit.db, song_id=song_id)
        song = song | {"version": seen}  # the person is still editing the version they saw
        return await visit.render("song_form.html", 422, song=song, values=values, errors=_field_errors(exc), back=back)
    except DuplicateSong as exc:
        song = await songs.get_song(db=visit.db, song_id=song_id) | {"version": seen}
        duplicate = exc.extensions["existing_id"]
        return await visit.render(
            "song_form.html", 409, song=song, values=values, errors={}, duplicate=duplicate, back=back
        )
    except PreconditionFailed:
        # Changed by someone else since: nothing is overwritten. Theirs is shown beside the
        # person's, whose form now carries the new version, to redo the change on it.
        current = await songs.get_song(db=visit.db, song_id=song_id)
        return await visit.render(
            "song_form.html", 412, song=current, values=values, errors={}, theirs=current, back=back
        )
    return visit.redirect(_url(f"/ui/songs/{song_id}", {"done": "saved", "back": urlencode(back)}))


@router.get("/ui/songs/{song_id:song}/delete")
async def delete_song_page(song_id: int, request: Request, visit: VisitDep) -> Response:
    visit.require("write")
    song = await songs.get_song(db=visit.db, song_id=song_id)
    back = _back(request.query_params.get("back", ""))
    return await visit.render("delete.html", song=song, back=back)


@router.post("/ui/songs/{song_id:song}/delete")
async def delete_song(song_id: int, visit: VisitDep) -> Response:
    """Deletes the song if it is still the version the person confirmed; else asks again, showing it as it is now."""
    form = await visit.form()
    visit.require("write")
    back = _back(str(form.get("back", "")))
    try:
        await songs.delete_song(db=visit.db, song_id=song_id, versions={_version(form)})
    except PreconditionFailed:
        current = await songs.get_song(db=visit.db, song_id=song_id)
        return await visit.render("delete.html", 412, song=current, back=back, changed=True)
    return visit.redirect(_url("/", back | {"deleted": "1"}))


@router.get(IMPORT_PATH)
async def import_page(visit: VisitDep) -> Response:
    visit.require("write")
    return await visit.render("import.html", errors={}, values={})


@router.post(IMPORT_PATH)
async def import_file(visit: VisitDep) -> Response:
    """Imports an uploaded file with `songbook import`'s code, in one transaction; the page shows it happen."""
    form = await visit.form()
    run = None
    try:
        visit.require("write")
        upload, values = form.get("file"), {name: str(form.get(name, "")) for name in ("format", "on_conflict")}
        errors: dict[str, str] = {}
        if not isinstance(upload, UploadFile) or not upload.filename:
            errors["file"] = "Choose a CSV, NDJSON or JSON file."
        elif values["format"] not in ("", *Format):
            errors["format"] = "Choose CSV, NDJSON or JSON."
        elif not values["format"]:
            try:
                format_of(upload.filename)
            except FileError:
                errors["format"] = "Cannot tell the format from the file's name: choose CSV, NDJSON or JSON."
        if values["on_conflict"] not in ("", *OnConflict):
            errors["on_conflict"] = "Choose what to do with a song already there."
        if errors or not isinstance(upload, UploadFile) or not upload.filename:
            return await visit.render("import.html", 422, errors=errors, values=values)
        file_format = Format(values["format"]) if values["format"] else format_of(upload.filename)
        on_conflict = OnConflict(values["on_conflict"] or OnConflict.SKIP)
        run = _ImportRun(visit.db, upload.filename, upload, file_format, on_conflict, form)
        return visit.stream("import_run.html", run=run, events=run.events())
    finally:
        if run is None:  # else the run closes it, once the file is read
            await form.close()


@router.get("/ui/sign-in")
async def sign_in_page(request: Request, visit: VisitDep) -> Response:
    return await visit.render("sign_in.html", next=_local(request.query_params.get("next", "/")), error=None)


@router.post("/ui/sign-in")
async def sign_in(visit: VisitDep) -> Response:
    """Checks the pasted key, then keeps it in the signed cookie: never in a URL, the page, or a log line."""
    form = await visit.form()
    key, next_url = str(form.get("key", "")).strip(), _local(str(form.get("next", "/")))
    try:
        caller = await check_key(visit.request, visit.settings, key) if key else None
    except KeyRefused:
        caller = None
    if caller is None:
        error = "That is not a valid key: unknown, mistyped or revoked." if key else "Paste your API key."
        return await visit.render("sign_in.html", 401, next=next_url, error=error)
    visit.sign_in(key)
    return visit.redirect(next_url)


@router.post("/ui/sign-out")
async def sign_out(visit: VisitDep) -> Response:
    await visit.form()
    visit.sign_in(None)
    return visit.redirect("/")


@router.get("/ui/{path:path}")
async def not_a_page(path: str, visit: VisitDep) -> Response:
    raise NotFound(f"This page does not exist: /ui/{path}.")


@dataclass
class _ImportRun:
    """An upload being imported: what the streamed page reports while it runs, then its outcome."""

    db: Database
    name: str
    upload: UploadFile
    file_format: Format
    on_conflict: OnConflict
    form: FormData
    read: int = 0
    rejects: list[Rejected] = field(default_factory=list)
    summary: Summary | None = None
    failure: str | None = None

    async def events(self) -> AsyncIterator[str]:
        """ "reading" (then "applying") every half second while the import runs, then "done" or "failed"."""
        applying = False

        def note_applying(summary: Summary) -> None:
            nonlocal applying
            applying = True

        work = asyncio.ensure_future(
            songs.import_songs(
                db=self.db,
                sources=[(self.name, self._counted(read_rows(self.upload.file, self.file_format)))],
                on_conflict=self.on_conflict,
                rejected=self._reject,
                applying=note_applying,
            )
        )
        try:
            while not work.done():
                await asyncio.wait([work], timeout=PROGRESS_EVERY_SECONDS)
                if not work.done():
                    yield "applying" if applying else "reading"
            try:
                self.summary = work.result()
            except (FileError, MaxErrorsExceeded, ImportAborted) as exc:
                self.failure = f"{exc}; nothing was imported."
            except AppError as exc:
                self.failure = f"{exc.detail} Nothing was imported."
            except DATABASE_ERRORS as exc:
                if (unavailable := database_unavailable(exc)) is not None:
                    self.failure = f"{unavailable.detail} Nothing was imported."
                else:
                    logger.exception("the import of %s failed", self.name)
                    self.failure = "The import failed by a fault of the service (it is logged); nothing was imported."
            yield "done" if self.summary else "failed"
        finally:
            work.cancel()  # the reader went away: the import's transaction is rolled back
            await asyncio.gather(work, return_exceptions=True)
            await self.form.close()

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    @property
    def shown_rejects(self) -> list[Rejected]:
        return self.rejects[:REJECTS_SHOWN]

    def _reject(self, row: Rejected) -> None:
        self.rejects.append(row)

    def _counted(self, rows: Iterable[RawRow]) -> Iterator[RawRow]:
        for row in rows:
            self.read += 1
            yield row


async def _sign_in_page(request: Request, exc: SignInNeeded) -> Response:
    page: Visit = request.state.visit
    return await page.render("sign_in.html", exc.status, next=_local(exc.then or _here(request)), error=exc.message)


async def _problem_page(request: Request, exc: Exception) -> Response:
    """The API's answer to `exc` (its handler's problem), as a page; an error it has no handler for is raised."""
    handler = next(
        (request.app.exception_handlers[kind] for kind in type(exc).__mro__ if kind in request.app.exception_handlers),
        None,
    )
    if handler is None:
        raise exc
    answer = await handler(request, exc)
    problem = json.loads(answer.body)
    # The page's header as on every page (who is signed in), if the visit was made before the error.
    visit = getattr(request.state, "visit", None)
    html = await templates.get_template("problem.html").render_async(problem=problem, visit=visit, notice=None)
    response = HTMLResponse(html, status_code=answer.status_code, headers={"Cache-Control": "no-store"})
    if "retry-after" in answer.headers:
        response.headers["Retry-After"] = answer.headers["retry-after"]
    return response


def _search_values(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A search's fields from a URL or a form: the known ones, trimmed, the empty ones left out."""
    return {name: value.strip() for name, value in items if name in SEARCH_FIELDS and value.strip()}


def _back(query: str) -> dict[str, str]:
    """The search a song page was reached from (its query string): only a search's fields, so never another URL."""
    return _search_values(parse_qsl(query))


def _url(path: str, values: Mapping[str, str | None]) -> str:
    query = urlencode({name: value for name, value in values.items() if value})
    return f"{path}?{query}" if query else path


def _local(target: str) -> str:
    """A path on this site to go to after signing in; anything else (another site: //host, a scheme) is `/`."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _song_values(form: ImmutableMultiDict[str, Any]) -> dict[str, str]:
    return {name: str(form.get(name, "")) for name in ("name", "artist", "year")}


def _song_input(values: dict[str, str]) -> dict[str, Any]:
    """The form's fields as `SongCreate` takes them: a year of digits is a number, an empty one none."""
    year = values["year"].strip()
    # ASCII digits: str.isdigit() takes others too ("²"), which int() refuses; a longer number is no year.
    number = year.isascii() and year.isdigit() and len(year) <= 9
    return {"name": values["name"], "artist": values["artist"], "year": int(year) if number else year or None}


def _shown(song: SongRow) -> dict[str, str]:
    return {"name": song["name"], "artist": song["artist"], "year": "" if song["year"] is None else str(song["year"])}


def _version(form: ImmutableMultiDict[str, Any]) -> int:
    """The version of the song the person saw (the form's hidden field); 0 matches none."""
    value = str(form.get("version", ""))
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else 0


def _field_errors(exc: ValidationError) -> dict[str, str]:
    """Each invalid field's message, as the API's `errors[].message` says it."""
    errors: dict[str, str] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "form"
        errors.setdefault(name, str(error["msg"]).removeprefix("Value error, "))
    return errors


def _app_field_errors(exc: InvalidParameter) -> dict[str, str]:
    """The field the catalog found invalid (a sort key it does not know, a cursor of another search), and why."""
    return {item["field"]: item["message"] for item in exc.extensions["errors"]}
