"""Reconciliation: accepted claims on the cache server against the DID document.

Per asset and for many at once; what is on chain is marked published without a
write, what is missing goes through the pipeline's verify-record-publish path, so
racing the listener still gives one chain write.

Assets go in pages of `PAGE_SIZE`: what evops knows of a page's claims is read in
one query, each asset's claims are listed at the cache server (`concurrency` at
once), the DID documents of the assets holding a credential are read from chain
together (JSON-RPC batches, `Chain.resolve_documents`), then each asset acts on what
differs. A claim found on chain that is already `published` here costs no database
call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    resolve_documents,
)
from claims.pipeline import claim_accept_issued, claim_mark_rejected
from claims.retry import readable_error
from evops.integrations.cache_server import RoleClaim
from evops.protocol.credentials import token_sha256
from evops.protocol.dids import DID
from evops.protocol.signer import Signer

log = logging.getLogger(__name__)

# Assets per page: one query of what evops knows, one batched read of documents.
PAGE_SIZE = 500


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
    return await _reconcile_page([asset], integrations, actor, 1, None)


@dataclass(eq=False)
class _Listed:
    """One asset between listing its claims and acting on them."""

    asset: Asset
    result: ReconcileResult
    known: selectors.KnownClaims
    claims: list[tuple[RoleClaim, str]] = field(default_factory=list)
    failed: bool = False


async def _reconcile_page(
    assets: Sequence[Asset],
    integrations: Integrations,
    actor: Actor,
    concurrency: int,
    progress: Callable[[int], object] | None,
) -> ReconcileResult:
    known = await db(selectors.known_claims)([asset.pk for asset in assets])
    listed = [
        _Listed(asset, ReconcileResult(assets=1), known.get(asset.pk, _NOTHING_KNOWN))
        for asset in assets
    ]
    documents: dict[str, dict[str, Any]] = {}

    def done(item: _Listed) -> None:
        if not item.failed:
            metrics.RECONCILE_RUNS.labels("done" if item.claims else "nothing").inc()
        if progress is not None:
            progress(1)

    async def listing(item: _Listed) -> None:
        await _list_claims(item, integrations, actor)
        if item.failed or not item.claims:
            done(item)

    async def acting(item: _Listed) -> None:
        await _act(item, documents, integrations, actor)
        done(item)

    await _each(listed, concurrency, listing)
    holding = [item for item in listed if item.claims and not item.failed]
    if holding:
        try:
            documents = await resolve_documents(
                integrations, [item.asset.did for item in holding]
            )
        except Exception as exc:
            for item in holding:  # each asset holding a claim fails with it
                _failed(item, exc)
                done(item)
            holding = []
    await _each(holding, concurrency, acting)
    total = ReconcileResult()
    for item in listed:
        total.add(item.result)
    return total


_NOTHING_KNOWN = selectors.KnownClaims()


async def _each(
    items: Sequence[_Listed],
    workers: int,
    work: Callable[[_Listed], Awaitable[None]],
) -> None:
    """`work(item)` for every item, at most `workers` at once: a few tasks that
    each take the next item when done, not a task per item."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(min(max(1, workers), len(items)))))


async def _list_claims(item: _Listed, integrations: Integrations, actor: Actor) -> None:
    """The asset's accepted claims at the cache server; rejections of the claims
    evops waits on are recorded here."""
    try:
        signer = await asset_signer(integrations, item.asset)
        with metrics.timed(metrics.CACHE_SERVER_LATENCY, "accepted_claims"):
            listed = await integrations.cache.accepted_claims(signer, item.asset.did)
        item.claims = [
            (claim, token)
            for claim in listed
            if (token := claim.issued_token) and not claim.is_rejected
        ]
        await _open_claims(item, signer, integrations, actor)
    except Exception as exc:
        _failed(item, exc)


async def _act(
    item: _Listed,
    documents: dict[str, dict[str, Any]],
    integrations: Integrations,
    actor: Actor,
) -> None:
    asset, result = item.asset, item.result
    try:
        document = documents.get(asset.did) or documents[DID.parse(asset.did).canonical]
        for claim, token in item.claims:
            sha = token_sha256(token)
            entry = find_service_by_hash(document, sha)
            if entry is not None:
                if claim.id not in item.known.published:
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
        _failed(item, exc)


def _failed(item: _Listed, exc: Exception) -> None:
    log.warning(
        "reconciliation of an asset failed: %s", exc, extra=log_extra(item.asset)
    )
    metrics.RECONCILE_RUNS.labels("error").inc()
    item.failed = True
    item.result.errors.append(f"{item.asset.did}: {readable_error(exc)}")


async def _open_claims(
    item: _Listed, signer: Signer, integrations: Integrations, actor: Actor
) -> None:
    """Re-read by id the claims evops still waits on and the accepted list lacks.

    The accepted list never shows a rejection, and core NATS does not replay a
    notice sent while evops was down: without this a claim rejected then would stay
    `requested` forever. An issued one is picked up from the accepted list anyway.
    """
    asset = item.asset
    waiting = item.known.waiting - {claim.id for claim, _ in item.claims}
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
            item.result.rejected += 1


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
    for start in range(0, len(assets), PAGE_SIZE):
        page = assets[start : start + PAGE_SIZE]
        total.add(
            await _reconcile_page(page, integrations, actor, concurrency, progress)
        )
    return total


async def reconcile_active_assets(
    *, integrations: Integrations, actor: Actor, concurrency: int
) -> ReconcileResult:
    """`reconcile_assets` over every active asset, read a page at a time (the
    fleet is never all in memory)."""
    total = ReconcileResult()
    await db(transitions.claims_release_stale_publishing)(actor=actor)
    after_id = 0
    while page := await db(selectors.active_assets_page)(
        after_id=after_id, limit=PAGE_SIZE
    ):
        total.add(await _reconcile_page(page, integrations, actor, concurrency, None))
        after_id = page[-1].pk
    return total
