"""/keys: API keys, managed with an admin key."""

from typing import Annotated

from fastapi import APIRouter, Path, status

from app import keys
from app.auth import require
from app.db import SessionDep
from app.errors import problem_responses
from app.models import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic

KeyId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The key's id.")]

router = APIRouter(
    prefix="/keys", tags=["keys"], dependencies=[require("admin")], responses=problem_responses(401, 403, 500, 503)
)


@router.post("", status_code=status.HTTP_201_CREATED, responses=problem_responses(400, 409, 413, 415, 422))
async def create_key(key_in: ApiKeyCreate, session: SessionDep) -> ApiKeyCreated:
    """Makes a key. Its secret (`key`) is in this answer only: keep it."""
    return await keys.create_key(session=session, key_in=key_in)


@router.get("")
async def list_keys(session: SessionDep) -> list[ApiKeyPublic]:
    """Every key, revoked ones included; never their secrets."""
    return await keys.list_keys(session=session)


@router.delete("/{key_id}", responses=problem_responses(404, 422))
async def revoke_key(key_id: KeyId, session: SessionDep) -> ApiKeyPublic:
    """Revokes a key: it is refused from now on."""
    return await keys.revoke_key(session=session, key_id=key_id)
