"""The pipeline's timed calls to its peers: signer, role definitions, DID documents.

Thin async wrappers over `Integrations` that the pipeline steps, the credential check
and reconciliation share: they add the latency metrics, build a signer without a
database call when the lease already loaded the sealed key, and keep role
definitions for a few minutes (roles change rarely).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from assets.models import Asset, SignerBackend
from claims import metrics
from claims.dbthreads import db
from claims.integrations import Integrations
from evops.integrations.cache_server import Role
from evops.protocol.signer import Signer

log = logging.getLogger(__name__)


_ROLE_TTL = 300.0


def log_extra(asset: Asset | None = None, **context: Any) -> dict[str, Any]:
    extra = {key: value for key, value in context.items() if value}
    if asset is not None:
        extra["asset_did"] = asset.did
    return extra


async def asset_signer(integrations: Integrations, asset: Asset) -> Signer:
    if asset.signer_backend == SignerBackend.PKCS11 or (
        asset.signer_backend == SignerBackend.LOCAL_ENCRYPTED
        and Asset.key.is_cached(asset)
    ):
        # A token key is named by the row's own columns, and a sealed key that came
        # with the asset is loaded: building the signer reads nothing, so no thread
        # hop for it.
        return integrations.signer_for(asset)
    return await db(integrations.signer_for)(asset)


async def role_definition(
    integrations: Integrations, asset: Asset, namespace: str
) -> Role:
    """The role definition, kept by the bundle for a few minutes (roles change
    rarely); concurrent misses share one fetch (fetched as the first asset)."""
    cached = integrations.roles.get(namespace)
    if cached is not None and time.monotonic() - cached[0] < _ROLE_TTL:
        return cached[1]

    async def fetch() -> Role:
        signer = await asset_signer(integrations, asset)
        with metrics.timed(metrics.CACHE_SERVER_LATENCY, "role"):
            role = await integrations.cache.role(signer, asset.did, namespace)
        integrations.roles[namespace] = (time.monotonic(), role)
        return role

    # A burst misses together: the first miss fetches, the others share it (one
    # login and one role call instead of one per worker).
    return await integrations.role_flights.run(namespace, fetch)


def service_entries(document: dict[str, Any]) -> list[dict[str, Any]]:
    entries = document.get("service") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if isinstance(entry, dict)]


def find_service_by_hash(document: dict[str, Any], sha: str) -> dict[str, Any] | None:
    """The document's service entry whose `hash` is `sha` (protocol.md §8)."""
    for entry in service_entries(document):
        if str(entry.get("hash", "")).lower().removeprefix("0x") == sha:
            return entry
    return None


async def resolve_document(integrations: Integrations, did: str) -> dict[str, Any]:
    with metrics.timed(metrics.CHAIN_LATENCY, "resolve"):
        return await integrations.chain.resolve_document(did)


async def resolve_documents(
    integrations: Integrations, dids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Many DID documents read together, by canonical DID."""
    with metrics.timed(metrics.CHAIN_LATENCY, "resolve_many"):
        return await integrations.chain.resolve_documents(dids)
