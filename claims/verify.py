"""Is an issued credential acceptable? The core's check, and the delegate fallback.

An issuer may sign with a `veriKey` delegate listed in its DID document (protocol.md
§3); a token whose signature is not the issuer's own key is checked again against the
issuer's document resolved from chain.
"""

from __future__ import annotations

import logging
from typing import Any

from assets.models import Asset
from claims.integrations import Integrations
from claims.peer_calls import resolve_document
from evops.integrations.cache_server import Role
from evops.protocol.credentials import (
    AcceptedCredential,
    RejectedCredential,
    RejectionReason,
)
from evops.protocol.dids import DID
from evops.protocol.jwt import decode_token

log = logging.getLogger(__name__)


Verdict = AcceptedCredential | RejectedCredential


async def check_issued(
    integrations: Integrations, token: str, *, asset: Asset, role: Role
) -> Verdict:
    """The protocol core's check, and for a signature not by the issuer's own key,
    a second look.

    An issuer may sign with a `veriKey` delegate listed in its DID document
    (protocol.md §3; the cache server accepts those), so a bad signature is checked
    again against the issuer's document resolved from chain. Only then: most tokens
    are signed by the issuer's key, and a forged one costs one resolution.
    """
    result = _check(integrations, token, asset=asset, role=role)
    if (
        not isinstance(result, RejectedCredential)
        or result.reason != RejectionReason.BAD_SIGNATURE
    ):
        return result
    issuer = _issuer_of(token)
    if issuer is None or issuer.chain != DID.parse(asset.did).chain:
        return result
    document = await resolve_document(integrations, issuer.canonical)
    return _check(integrations, token, asset=asset, role=role, issuer_document=document)


def _issuer_of(token: str) -> DID | None:
    try:
        iss = decode_token(token).payload.get("iss")
        return DID.parse(iss) if isinstance(iss, str) else None
    except Exception:
        return None


def _check(
    integrations: Integrations,
    token: str,
    *,
    asset: Asset,
    role: Role,
    issuer_document: dict[str, Any] | None = None,
) -> Verdict:
    return integrations.check_credential(
        token,
        issuer_document=issuer_document,
        asset_did=asset.did,
        allowed_claim_types=integrations.allowed_claim_types,
        # The protocol core reads the raw role JSON (`definition.issuer`).
        role_definition=role.raw,
        now=integrations.now(),
    )


def claim_type_of(token: str) -> str:
    """The claimType inside a token (to pick the role definition to check against)."""
    try:
        claim_data = decode_token(token).payload.get("claimData")
    except Exception:
        return ""
    if isinstance(claim_data, dict) and isinstance(claim_data.get("claimType"), str):
        return str(claim_data["claimType"])
    return ""
