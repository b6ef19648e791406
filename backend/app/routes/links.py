"""HTTP details shared by the listing routes: the query, the page size, the next-page link and the count preference."""

from collections.abc import Mapping
from typing import Literal, TypeVar

import pydantic
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError

from app.config import get_settings
from app.errors import InvalidParameter
from app.models import ArtistQuery, SongQuery

Model = TypeVar("Model", bound=pydantic.BaseModel)


def read_query(request: Request, model: type[Model]) -> Model:
    """The query string as `model`; refused as FastAPI refuses a query parameter model (422, each field named).

    For the hot listing route, in place of a parameter `Annotated[model, Query()]`:
    FastAPI reads such a model field by field, looking at each field's type on
    every request, about a sixth of a page's CPU time (backend/README.md, "Speed").
    The route describes the parameters with `openapi.reads_query(model)`.
    """
    return validate_query(model, dict(request.query_params))


def validate_query(model: type[Model], values: Mapping[str, str]) -> Model:
    """`values`, a query's, as `model`; refused as FastAPI refuses a query parameter model."""
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        errors = [error | {"loc": ("query", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def check_page_size(request: Request, query: SongQuery | ArtistQuery) -> None:
    """Refuses a page larger than the service's limit (the `max_page_size` setting); one not asked for is cut to it.

    It reads the settings itself (`get_settings`), not through a dependency of its own:
    each dependency costs FastAPI about 70,000 instructions a request, on the hot routes too.
    """
    largest = (await get_settings(request)).max_page_size
    if query.limit <= largest:
        return
    if "limit" not in query.model_fields_set:  # the default page, larger than this service's
        query.limit = largest
        return
    raise InvalidParameter("query", "limit", f"must be at most {largest}, this service's largest page")


def set_next_link(request: Request, response: Response, next_cursor: str | None) -> None:
    """Points `Link: rel="next"` at the same query, resumed after this page."""
    if next_cursor is not None:
        response.headers["Link"] = f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'


def preferred_count(request: Request) -> Literal["exact", "estimated"] | None:
    """The count asked for in the request's `Prefer` headers (RFC 7240), if any: over every line, parameters aside."""
    for preference in ",".join(request.headers.getlist("prefer")).split(","):
        name, _, value = preference.split(";")[0].strip().partition("=")
        value = value.strip().strip('"')
        if name.strip().lower() == "count" and value == "exact":
            return "exact"
        if name.strip().lower() == "count" and value == "estimated":
            return "estimated"
    return None
