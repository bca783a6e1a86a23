"""Reconciliation: accepted claims on the cache server against the DID document.

Per asset and for many at once; what is on chain is marked published without a
write, what is missing goes through the pipeline's verify-record-publish path, so
racing the listener still gives one chain write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from assets.models import Asset
from claims import metrics, selectors, transitions
from claims.dbthreads import db
from claims.integrations import Integrations
from claims.models import (
    Actor,
    ClaimStatus,
    MessageOutcome,
)
from claims.peer_calls import (
    asset_signer,
    find_service_by_hash,
    log_extra,
    resolve_document,
)
from claims.pipeline import claim_accept_issued, claim_mark_rejected
from claims.retry import readable_error
from evops.integrations.cache_server import RoleClaim
from evops.protocol.credentials import token_sha256
from evops.protocol.signer import Signer

log = logging.getLogger(__name__)


@dataclass
class ReconcileResult:
    """What reconciling one or more assets did."""

    assets: int = 0
    published: int = 0
    already_present: int = 0
    rejected: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: ReconcileResult) -> None:
        self.assets += other.assets
        self.published += other.published
        self.already_present += other.already_present
        self.rejected += other.rejected
        self.pending += other.pending
        self.errors.extend(other.errors)


async def asset_reconcile(
    *, asset: Asset, integrations: Integrations, actor: Actor
) -> ReconcileResult:
    """Accepted claims on the cache server vs the DID document resolved from chain.

    Compared by token sha256 (§8): what is in the document is marked published
    without a write; what is missing goes through the same verify-record-publish
    path as a NATS notice, so racing the listener still gives one write.
    """
    result = ReconcileResult(assets=1)
    try:
        signer = await asset_signer(integrations, asset)
        with metrics.timed(metrics.CACHE_SERVER_LATENCY, "accepted_claims"):
            listed = await integrations.cache.accepted_claims(signer, asset.did)
        claims = [
            (claim, token)
            for claim in listed
            if (token := claim.issued_token) and not claim.is_rejected
        ]
        await _open_claims(asset, signer, claims, integrations, actor, result)
        if not claims:
            metrics.RECONCILE_RUNS.labels("nothing").inc()
            return result
        document = await resolve_document(integrations, asset.did)
        for claim, token in claims:
            sha = token_sha256(token)
            entry = find_service_by_hash(document, sha)
            if entry is not None:
                await db(transitions.claim_record_found)(
                    asset=asset,
                    claim_id=claim.id,
                    token=token,
                    token_sha256=sha,
                    role=claim.claim_type,
                    role_version=claim.claim_type_version,
                    service_id=str(entry.get("id", "")),
                    actor=actor,
                )
                result.already_present += 1
                continue
            outcome = await claim_accept_issued(
                asset=asset,
                claim_id=claim.id,
                integrations=integrations,
                actor=actor,
                claim=claim,
                details={"source": "reconciliation"},
            )
            if outcome.outcome == MessageOutcome.REJECTED:
                result.rejected += 1
            elif outcome.reason == f"claim {ClaimStatus.PUBLISHED}":
                result.published += 1
            else:
                result.pending += 1
    except Exception as exc:
        log.warning(
            "reconciliation of an asset failed: %s", exc, extra=log_extra(asset)
        )
        metrics.RECONCILE_RUNS.labels("error").inc()
        result.errors.append(f"{asset.did}: {readable_error(exc)}")
        return result
    metrics.RECONCILE_RUNS.labels("done").inc()
    return result


async def _open_claims(
    asset: Asset,
    signer: Signer,
    accepted: list[tuple[RoleClaim, str]],
    integrations: Integrations,
    actor: Actor,
    result: ReconcileResult,
) -> None:
    """Re-read by id the claims evops still waits on and the accepted list lacks.

    The accepted list never shows a rejection, and core NATS does not replay a
    notice sent while evops was down: without this a claim rejected then would stay
    `requested` forever. An issued one is picked up from the accepted list anyway.
    """
    waiting = await db(selectors.open_claim_ids)(asset.pk)
    waiting -= {claim.id for claim, _ in accepted}
    for claim_id in sorted(waiting):
        with metrics.timed(metrics.CACHE_SERVER_LATENCY, "get_claim"):
            claim = await integrations.cache.get_claim(signer, asset.did, claim_id)
        if claim is None or not claim.is_rejected:
            continue
        outcome = await claim_mark_rejected(
            asset=asset,
            claim_id=claim_id,
            integrations=integrations,
            actor=actor,
            claim=claim,
        )
        if outcome.outcome == MessageOutcome.PROCESSED:
            result.rejected += 1


async def reconcile_assets(
    *,
    assets: Sequence[Asset],
    integrations: Integrations,
    actor: Actor,
    concurrency: int,
    progress: Callable[[int], object] | None = None,
) -> ReconcileResult:
    """Reconcile many assets with bounded concurrency; `progress(n)` after each."""

    total = ReconcileResult()
    await db(transitions.claims_release_stale_publishing)(actor=actor)
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(asset: Asset) -> None:
        async with semaphore:
            total.add(
                await asset_reconcile(
                    asset=asset, integrations=integrations, actor=actor
                )
            )
            if progress is not None:
                progress(1)

    await asyncio.gather(*(one(asset) for asset in assets))
    return total
