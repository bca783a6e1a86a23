"""Is an issued credential acceptable? One check for every path (protocol.md §8).

An issue notice, a legacy NATS message carrying the token, reconciliation and a staff
retry all end in `verify_claim`: the claim as the cache server holds it *now* is the
truth, never the message. The decision itself is the protocol core's
(`evops.protocol.verification.verify_for_publication`): the hub's claim exists for
this asset, accepted and not rejected, with this very token; the token's signature
(or a `veriKey` delegate's), subject, claim type, `exp`/`nbf`/`iat`; the role
definition of that type, narrowed by the local trust policy; the issuer allowed by
it (a DID listing, `TRUSTED_ISSUERS`, or a role chain proven from chain and store).

This module gives the core its lookups (the hub through the asset's own session,
the chain, the credential store), all through the bundle's clients. A lookup that
fails raises (`VerificationUnavailable`, or the peer's own transient error): the
message is retried later, and nothing is published on a guess.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from assets.models import Asset
from claims import metrics
from claims.integrations import Integrations
from claims.peer_calls import asset_signer, resolve_document
from evops.integrations.cache_server import RoleClaim, UnknownRoleError
from evops.protocol.credentials import AcceptedCredential, RejectedCredential
from evops.protocol.dids import DID
from evops.protocol.roles import RoleSources
from evops.protocol.signer import Signer
from evops.protocol.verification import HubClaim, verify_for_publication

log = logging.getLogger(__name__)


Verdict = AcceptedCredential | RejectedCredential


def hub_claim(claim: RoleClaim | None) -> HubClaim | None:
    """The fields of the cache server's claim that the check reads."""
    if claim is None:
        return None
    return HubClaim(
        id=claim.id,
        subject=claim.subject or claim.requester,
        claim_type=claim.claim_type,
        issued_token=claim.issued_token,
        is_accepted=claim.is_accepted,
        is_rejected=claim.is_rejected,
        rejection_reason=claim.rejection_reason,
    )


async def fetch_claim(
    integrations: Integrations, asset: Asset, claim_id: str
) -> RoleClaim | None:
    """`GET /v1/claim/<id>` in the asset's session (None: the hub does not know it)."""
    signer = await asset_signer(integrations, asset)
    with metrics.timed(metrics.CACHE_SERVER_LATENCY, "get_claim"):
        return await integrations.cache.get_claim(signer, asset.did, claim_id)


def sources_for(
    integrations: Integrations, asset: Asset, signer: Signer
) -> RoleSources:
    """The core's lookups: role definitions from the hub (as this asset), DID
    documents from chain, credential content from the store."""

    async def fetch_role(namespace: str) -> Mapping[str, Any] | None:
        try:
            with metrics.timed(metrics.CACHE_SERVER_LATENCY, "role"):
                role = await integrations.cache.role(signer, asset.did, namespace)
        except UnknownRoleError:
            return None
        return role.raw

    async def resolve(did: DID) -> Mapping[str, Any]:
        return await resolve_document(integrations, did.canonical)

    async def fetch_content(cid: str) -> str:
        with metrics.timed(metrics.STORE_LATENCY):
            return await integrations.store_for(signer, asset.did).get(cid)

    return RoleSources(
        fetch_role=fetch_role, resolve_document=resolve, fetch_content=fetch_content
    )


async def verify_claim(
    integrations: Integrations,
    *,
    asset: Asset,
    claim_id: str,
    claim: RoleClaim | None,
    presented_token: str | None = None,
) -> Verdict:
    """The §8 check of `claim` (as the hub answered for `claim_id`, just now).

    `presented_token` is what a legacy message carried: it must be the hub's own
    issued token, byte for byte. Raises when a lookup the decision needs failed.
    """
    signer = await asset_signer(integrations, asset)
    return await verify_for_publication(
        hub_claim(claim),
        claim_id=claim_id,
        asset_did=asset.did,
        policy=integrations.policy,
        now=integrations.now(),
        roles=integrations.verifier,
        sources=sources_for(integrations, asset, signer),
        presented_token=presented_token,
        clock_skew=integrations.clock_skew,
    )
