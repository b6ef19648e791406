"""Liveness and readiness, for orchestrators and load balancers; metrics, for Prometheus."""

from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel

from app import metrics, schema
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


# Not in the API's description: for Prometheus, which scrapes each instance directly.
metrics_router = APIRouter(include_in_schema=False)


@metrics_router.get("/metrics")
async def prometheus_metrics(db: DatabaseDep) -> Response:
    """Every metric, in the Prometheus text format; the gauges as they are now."""
    metrics.sample(db.usage())
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
