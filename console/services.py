"""Staff actions of the operator console, on top of the claim pipeline.

Each function is what one admin action calls: it names the staff user as the actor
(so the claim history says who), calls the pipeline, and returns what happened for
the result message. Live updates need nothing here: every transition the pipeline
makes sends `claims.signals.claim_changed` after commit, which `console.live` relays.

`integrations` defaults to `integrations_from_settings()`; tests pass their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone

from assets.models import Asset
from claims import failures, inbox, pipeline, reconcile, retry
from claims.integrations import Integrations, integrations_from_settings
from claims.models import (
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    MessageKind,
    MessageOutcome,
    staff_actor,
)

IntegrationsFactory = Callable[[], Integrations]
ReportT = TypeVar("ReportT")

# The asset actions call the cache server and the chain (and may wait for a receipt)
# while a web worker waits, so they run in the request for a bounded selection only.
# A larger one is queued for the listener (`assets_enqueue`), which does the same
# work in its workers and names the user in the claim history.
ERR_TOO_MANY_ASSETS = (
    "{action} runs while the page waits, for at most {limit} assets; {count} are "
    "selected. Queue them for the listener instead."
)


class SelectionTooLarge(ValueError):
    """More assets than an in-request action may handle (`sync_asset_limit`)."""


def sync_asset_limit() -> int:
    """Most assets one in-request reconcile / prequalification action takes."""
    return int(settings.CONSOLE_SYNC_ASSET_LIMIT)


def selection_is_queued(count: int) -> bool:
    """The console's run-now-or-queue decision for `count` selected assets.

    Up to `sync_asset_limit()` the action runs in the request and the page shows its
    result; beyond it the assets are queued for the listener.
    """
    return count > sync_asset_limit()


def too_many_assets(action: str, count: int) -> str:
    """The refusal text for `count` selected assets, or "" when within the limit."""
    limit = sync_asset_limit()
    if count <= limit:
        return ""
    return ERR_TOO_MANY_ASSETS.format(action=action, limit=limit, count=count)


@dataclass
class QueueResult:
    """Assets queued for the listener, and those already queued (a repeat click)."""

    queued: int = 0
    already_queued: int = 0


def assets_enqueue(
    *, kind: str, assets: Iterable[Asset], actor_user: Any
) -> QueueResult:
    """Queue `kind` (MessageKind PREQUALIFICATION or RECONCILE) for the listener.

    One inbox row per asset, marked with the user; the listener's workers file the
    request or reconcile the asset as for a NATS message, and the claim history
    names the user. Nothing here calls a peer, so any selection size is fine.
    """
    rows = inbox.inbound_enqueue(
        kind=kind, dids=[asset.did for asset in assets], user=actor_user
    )
    result = QueueResult()
    for row in rows:
        if row.outcome == MessageOutcome.PENDING:
            result.queued += 1
        else:
            result.already_queued += 1
    return result


def _check_selection(action: str, assets: Sequence[Asset]) -> None:
    refusal = too_many_assets(action, len(assets))
    if refusal:
        raise SelectionTooLarge(refusal)


@dataclass
class RetryResult:
    """Claims a staff retry scheduled again, and those it skipped (not failed)."""

    scheduled: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


@dataclass
class PrequalificationResult:
    """Per asset: a claim request filed (or already pending), or an error."""

    filed: int = 0
    already_pending: int = 0
    errors: list[str] = field(default_factory=list)


def claims_retry_publication(
    *, claims: Sequence[ClaimRecord], actor_user: Any
) -> RetryResult:
    """Send failed claims back to the step they failed at, due now.

    The listener's worker carries them on (the publication still goes through the
    CAS into `publishing`, so a double click never writes twice). Claims that are
    not failed are skipped, not an error: a list selection may mix statuses.
    """
    actor = staff_actor(actor_user)
    result = RetryResult()
    for claim in claims:
        if claim.status != ClaimStatus.FAILED:
            result.skipped.append(claim.pk)
            continue
        if failures.claim_retry(record=claim, actor=actor):
            result.scheduled.append(claim.pk)
        else:
            # Someone else (another operator, the reconciler) moved it first.
            result.skipped.append(claim.pk)
    return result


def claim_retry_publication(*, claim: ClaimRecord, actor_user: Any) -> bool:
    """One claim: True when it was failed and is now scheduled again."""
    return bool(
        claims_retry_publication(claims=[claim], actor_user=actor_user).scheduled
    )


EXPORT_EVENT = "exported"
_EXPORT_CHUNK = 2000


def claims_note_export(*, claim_ids: Iterable[int], actor_user: Any) -> int:
    """Write "exported as CSV by <user>" into the history of each exported claim.

    An export hands claim data out of the console, so the claims' history says who
    took it. Written in chunks with one INSERT each (a select-all export of 100,000
    claims is 50 statements, not 100,000); no status changes, so no live update.
    Returns how many claims were noted.
    """
    actor = staff_actor(actor_user)
    message = f"Exported as CSV by {actor.label}."
    count = 0
    chunk: list[ClaimEvent] = []
    for claim_id in claim_ids:
        chunk.append(
            ClaimEvent(
                record_id=claim_id,
                kind=EXPORT_EVENT,
                actor=actor.kind,
                actor_label=actor.label,
                user_id=actor.user_id,
                message=message,
            )
        )
        if len(chunk) >= _EXPORT_CHUNK:
            ClaimEvent.objects.bulk_create(chunk)
            count += len(chunk)
            chunk = []
    if chunk:
        ClaimEvent.objects.bulk_create(chunk)
        count += len(chunk)
    return count


def _run(
    work: Callable[[Integrations], Any], integrations: IntegrationsFactory | None
) -> Any:
    async def run() -> Any:
        bundle = (integrations or integrations_from_settings)()
        try:
            return await work(bundle)
        finally:
            await bundle.aclose()

    return async_to_sync(run)()


def assets_reconcile(
    *,
    assets: Sequence[Asset],
    actor_user: Any,
    integrations: IntegrationsFactory | None = None,
) -> ReconcileReport:
    """Reconcile the selected assets now (cache server vs the chain), as the user.

    Raises `SelectionTooLarge` beyond `sync_asset_limit()` assets.
    """
    _check_selection("Reconcile", assets)
    actor = staff_actor(actor_user)

    async def work(bundle: Integrations) -> reconcile.ReconcileResult:
        return await reconcile.reconcile_assets(
            assets=list(assets),
            integrations=bundle,
            actor=actor,
            concurrency=int(settings.RECONCILE_CONCURRENCY),
        )

    started = timezone.now()
    result: reconcile.ReconcileResult = _run(work, integrations)
    # The pipeline counts a claim it could not publish as "pending"; a claim that
    # failed during this run is failed, and the staff member should read so.
    failed = list(
        ClaimRecord.objects.filter(
            asset__in=[asset.pk for asset in assets],
            status=ClaimStatus.FAILED,
            updated_at__gte=started,
        ).values_list("asset__did", "last_error")
    )
    moved = min(len(failed), result.pending)
    result.pending -= moved
    return ReconcileReport(
        assets=result.assets,
        published=result.published,
        already_present=result.already_present,
        rejected=result.rejected,
        pending=result.pending,
        errors=result.errors,
        failed=len(failed),
        failures=[f"{did}: {error}" for did, error in failed],
    )


@dataclass
class ReconcileReport(reconcile.ReconcileResult):
    """`ReconcileResult`, with the claims that failed during the run apart."""

    failed: int = 0
    failures: list[str] = field(default_factory=list)


def assets_request_prequalification(
    *,
    assets: Sequence[Asset],
    actor_user: Any,
    integrations: IntegrationsFactory | None = None,
) -> PrequalificationResult:
    """File the prequalification claim request for each selected asset, as the user.

    One asset's failure (cache server down, no key) is reported and the others go
    on; a request already pending on the cache server is counted, not an error.
    Raises `SelectionTooLarge` beyond `sync_asset_limit()` assets.
    """
    _check_selection("Request prequalification", assets)
    actor = staff_actor(actor_user)
    result = PrequalificationResult()

    async def work(bundle: Integrations) -> None:
        # The page waits for all of them: file them side by side, as reconcile does.
        semaphore = asyncio.Semaphore(int(settings.RECONCILE_CONCURRENCY))

        async def one(asset: Asset) -> None:
            async with semaphore:
                try:
                    outcome = await pipeline.claim_request_prequalification(
                        asset=asset, integrations=bundle, actor=actor
                    )
                except Exception as exc:
                    error = retry.readable_error(exc)
                    result.errors.append(f"{asset.did}: {error}")
                    return
            if outcome.reason == pipeline.REASON_FILED:
                result.filed += 1
            else:
                result.already_pending += 1

        await asyncio.gather(*(one(asset) for asset in assets))

    _run(work, integrations)
    return result


def messages_retry_failed(
    *, messages: Sequence[InboundMessage], actor_user: Any
) -> list[InboundMessage]:
    """Hand failed inbound messages back to the listener (staff retry).

    A prequalification request that gave up has no claim yet: retrying the message
    files it again; a notice that gave up is read again from the cache server. Only
    messages still failed are handed back (a double click hands back once).
    """
    # One conditional update each: of two operators clicking at once, each message
    # is handed back (and reported) by exactly one.
    return [
        m
        for m in messages
        if m.outcome == MessageOutcome.FAILED
        and inbox.inbound_requeue(message_ids=[m.pk]) == 1
    ]


@dataclass
class RunOrQueue(Generic[ReportT]):
    """What an asset action did: ran now (`report`) or queued (`queued`)."""

    report: ReportT | None = None
    queued: QueueResult | None = None


def assets_reconcile_or_queue(
    *,
    assets: Sequence[Asset],
    actor_user: Any,
    integrations: IntegrationsFactory | None = None,
) -> RunOrQueue[ReconcileReport]:
    """The console's Reconcile: now for a small selection, else queued.

    `selection_is_queued` decides; either way the claim history names the user.
    """
    if selection_is_queued(len(assets)):
        queued = assets_enqueue(
            kind=MessageKind.RECONCILE, assets=assets, actor_user=actor_user
        )
        return RunOrQueue(queued=queued)
    report = assets_reconcile(
        assets=assets, actor_user=actor_user, integrations=integrations
    )
    return RunOrQueue(report=report)


def assets_prequalify_or_queue(
    *,
    assets: Sequence[Asset],
    actor_user: Any,
    integrations: IntegrationsFactory | None = None,
) -> RunOrQueue[PrequalificationResult]:
    """The console's Request prequalification: now for a small selection, else
    queued (`selection_is_queued` decides)."""
    if selection_is_queued(len(assets)):
        queued = assets_enqueue(
            kind=MessageKind.PREQUALIFICATION, assets=assets, actor_user=actor_user
        )
        return RunOrQueue(queued=queued)
    report = assets_request_prequalification(
        assets=assets, actor_user=actor_user, integrations=integrations
    )
    return RunOrQueue(report=report)
