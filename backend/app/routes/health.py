"""Liveness and readiness, for orchestrators and load balancers."""

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from app import schema
from app.db import DatabaseDep
from app.openapi import problem_responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up and answering."""
    return Health()


@router.get("/readyz", responses=problem_responses(503))
async def readyz(db: DatabaseDep) -> Health:
    """The database answers and its schema is at the latest migration."""
    await schema.check_ready(db)
    return Health()
