"""/keys: API keys, managed with an admin key."""

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app import keys
from app.auth import AdminDep, KeyFirstRoute
from app.models import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from app.openapi import problem_responses

KeyId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The key's id.")]

router = APIRouter(
    prefix="/keys",
    tags=["keys"],
    responses=problem_responses(401, 403, 500, 503),
    route_class=KeyFirstRoute,
)


@router.post("", status_code=status.HTTP_201_CREATED, responses=problem_responses(400, 409, 413, 415, 422))
async def create_key(key_in: ApiKeyCreate, access: AdminDep, response: Response) -> ApiKeyCreated:
    """Makes a key. Its secret (`key`) is in this answer only: keep it."""
    response.headers["Cache-Control"] = "no-store"  # a secret: no cache keeps it (RFC 9111)
    return await keys.create_key(db=access.db, key_in=key_in)


@router.get("")
async def list_keys(access: AdminDep) -> list[ApiKeyPublic]:
    """Every key, revoked ones included; never their secrets."""
    return await keys.list_keys(db=access.db)


@router.delete("/{key_id}", responses=problem_responses(404, 422))
async def revoke_key(key_id: KeyId, access: AdminDep, keyring: keys.KeyringDep) -> ApiKeyPublic:
    """Revokes a key: it is refused from now on."""
    return await keys.revoke_key(db=access.db, key_id=key_id, keyring=keyring)
