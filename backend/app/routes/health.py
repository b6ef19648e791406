"""Liveness and readiness, for orchestrators and load balancers."""

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from app import schema
from app.errors import DatabaseUnavailable, problem_responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up and answering."""
    return Health()


@router.get("/readyz", responses=problem_responses(503))
async def readyz(request: Request) -> Health:
    """The database answers and its schema is at the latest migration."""
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as connection:
        current = await schema.current_revisions(connection)
    await request.app.state.db.ping()  # the hot paths' own pool too
    if current != request.app.state.schema_heads:
        raise DatabaseUnavailable(
            f"The database schema is at {sorted(current) or 'no revision'}, not at the latest migration; "
            "run `songbook migrate`.",
            headers={"Retry-After": "5"},
        )
    return Health()
