"""``/v1/me``: who am I (any key); ``/v1/keys``, and list, create, revoke keys (an all-collections admin).

Managing keys over HTTP needs an admin key that sees every collection: a key bound to some
collections could otherwise mint one that sees them all. The console's Keys page calls these.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from ..auth import ensure_sees
from ..deps import AdminKey, AnyKey, JsonOnly, ServicesDep
from ..keys_store import ApiKey, parse_expiry
from ..problems import problem_responses
from ..schemas import KeyCreate, KeyList, KeyOut, NewKeyOut

router = APIRouter(prefix="/v1", tags=["keys"], responses=problem_responses())


async def key_admin(key: AdminKey) -> ApiKey:
    """The caller, when it is an admin key for all collections; 403 otherwise."""
    ensure_sees(key, None)
    return key


KeyAdmin = Annotated[ApiKey, Depends(key_admin)]
KeyId = Annotated[str, Path(pattern=r"^vk_[0-9a-f]{12}$")]


@router.get("/me", response_model=KeyOut)  # not /keys/me: DELETE /keys/{id} would match it
def who_am_i(key: AnyKey) -> KeyOut:
    """The calling key: its scopes and collections (what the console shows follows them)."""
    return KeyOut.from_key(key)


@router.get("/keys", response_model=KeyList)
def list_keys(key: KeyAdmin, services: ServicesDep) -> KeyList:
    """Every key, oldest first, revoked ones included; never a secret."""
    return KeyList(items=[KeyOut.from_key(k) for k in services.keys.keys()])  # noqa: SIM118 (a method)


@router.post("/keys", status_code=201, response_model=NewKeyOut, dependencies=[JsonOnly])
def create_key(key: KeyAdmin, body: KeyCreate, services: ServicesDep) -> NewKeyOut:
    """A new key; the answer holds its token, the only copy (audited: ``key.create``)."""
    made = services.keys.create(
        body.name,
        scopes=body.scopes,
        collections=body.collections,
        expires_at=parse_expiry(body.expires_in),
        actor=key.id,
    )
    return NewKeyOut(key=KeyOut.from_key(made.key), token=made.token)


@router.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key: KeyAdmin, key_id: KeyId, services: ServicesDep) -> KeyOut:
    """Revoke a key at once (audited: ``key.revoke``); 404 for an unknown id."""
    return KeyOut.from_key(services.keys.revoke(key_id, actor=key.id))
