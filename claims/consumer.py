"""The inbox consumer: one stored message, parsed, dispatched to one pipeline step.

`inbound_process` never lets a per-message error escape: malformed input is recorded
as rejected, a transient failure puts the message back with a backoff, anything
permanent marks it failed with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from assets.models import Asset
from claims import failures, inbox, message_columns, metrics, selectors
from claims.dbthreads import db
from claims.integrations import Integrations
from claims.message_columns import REASON_FOR_ISSUERS
from claims.models import (
    Actor,
    EventActor,
    InboundMessage,
    MessageKind,
    MessageOutcome,
)
from claims.pipeline import (
    Outcome,
    claim_accept_issued,
    claim_mark_rejected,
    claim_request_prequalification,
    is_permanent,
)
from claims.reconcile import asset_reconcile
from claims.retry import readable_error
from evops.protocol import messages as wire

log = logging.getLogger(__name__)


REASON_UNKNOWN_ASSET = "unknown_asset"
REASON_INACTIVE_ASSET = "inactive_asset"
_KIND_BY_TYPE = {
    wire.MessageType.PREQUALIFICATION: MessageKind.PREQUALIFICATION,
    wire.MessageType.ISSUE: MessageKind.ISSUE,
    wire.MessageType.REJECT: MessageKind.REJECT,
    wire.MessageType.REQUEST: MessageKind.REQUEST,
}


async def inbound_process(
    *,
    message_id: int,
    integrations: Integrations,
    actor: Actor,
    message: InboundMessage | None = None,
    assets: Mapping[str, Asset | None] | None = None,
) -> Outcome:
    """Parse one stored message, act on it, and record its outcome.

    Per-message errors never escape: malformed input is recorded as rejected,
    transient failures put the message back with a backoff, anything permanent
    marks it failed with the reason. `message`, the row as leased (subject and
    payload loaded), saves reading it again; `assets`, the assets loaded with the
    lease by address (`inbox.inbound_lease_due_with_assets`), saves looking the
    asset up.
    """
    if message is None or message.pk != message_id:
        message = await db(InboundMessage.objects.get)(pk=message_id)
    if message.requested_by_label:
        # Queued by a staff user in the console: the history names them.
        actor = Actor(
            EventActor.STAFF, message.requested_by_label, message.requested_by_id
        )
    if message.kind == MessageKind.RECONCILE:
        return await _inbound_reconcile(message, integrations, actor, assets)
    extra = {"subject": message.subject, "inbound_id": message.pk}
    try:
        hint = message_columns.message_hint(message)
    except wire.MessageError as exc:
        outcome = Outcome(MessageOutcome.REJECTED, str(exc))
        await _finish(message_id, outcome, kind=None)
        metrics.MESSAGES.labels("unknown", outcome.outcome).inc()
        log.info("message rejected: %s", exc, extra=extra)
        return outcome
    kind = MessageKind.LEGACY if hint.legacy else _KIND_BY_TYPE[hint.type]
    context = {"asset_did": hint.did.canonical, "claim_id": hint.claim_id}
    try:
        outcome = await _dispatch(hint, integrations, actor, assets)
    except Exception as exc:
        if is_permanent(exc):
            outcome = Outcome(MessageOutcome.FAILED, readable_error(exc))
            log.error("message failed: %s", exc, extra={**extra, **context})
            await _fail_claim(hint, outcome.reason, actor, assets)
        else:
            state = await db(inbox.inbound_defer)(message_id=message_id, error=exc)
            metrics.RETRIES.labels("message").inc()
            log.warning(
                "message deferred: %s", exc, extra={**extra, **context, "state": state}
            )
            if state == MessageOutcome.PENDING:
                return Outcome(MessageOutcome.PENDING, readable_error(exc))
            metrics.MESSAGES.labels(hint.type.value, MessageOutcome.FAILED).inc()
            # The row already names its asset and claim (written on arrival), so
            # it is found and settled with its claim when that publishes.
            await _fail_claim(hint, readable_error(exc), actor, assets)
            return Outcome(MessageOutcome.FAILED, readable_error(exc))
    await _finish(message_id, outcome, kind=kind, **context)
    metrics.MESSAGES.labels(hint.type.value, outcome.outcome).inc()
    log.info(
        "message %s: %s", outcome.outcome, outcome.reason, extra={**extra, **context}
    )
    return outcome


async def _fail_claim(
    hint: wire.InboundHint,
    reason: str,
    actor: Actor,
    assets: Mapping[str, Asset | None] | None,
) -> None:
    """A notice that failed for good marks its claim, where staff look and retry.

    Without this the failure stays on the inbound row while the claim shows
    `requested` with no error, and a retry of failed claims finds nothing.
    """
    if hint.type not in (wire.MessageType.ISSUE, wire.MessageType.REJECT):
        return
    if not hint.claim_id:
        return
    asset = await _asset_at(hint.did.address, assets)
    if asset is None and hint.type is wire.MessageType.REJECT:
        asset = await db(selectors.asset_for_claim_id)(hint.claim_id)
    if asset is None or not asset.active:
        return
    try:
        await db(failures.claim_fail_from_message)(
            asset=asset, claim_id=hint.claim_id, reason=reason, actor=actor
        )
    except Exception as exc:
        # The message's own failure is recorded regardless; this is a courtesy.
        log.warning("could not mark the claim failed: %s", exc)


async def _inbound_reconcile(
    message: InboundMessage,
    integrations: Integrations,
    actor: Actor,
    assets: Mapping[str, Asset | None] | None,
) -> Outcome:
    """A reconciliation of one asset, queued in the console (`inbound_enqueue`)."""
    extra = {"subject": message.subject, "inbound_id": message.pk}
    did_text = ""
    try:
        did = message_columns.queued_did(message.payload)
    except wire.MessageError as exc:
        outcome = Outcome(MessageOutcome.REJECTED, str(exc))
    else:
        did_text = did.canonical
        asset = await _asset_at(did.address, assets)
        if asset is None:
            outcome = Outcome(MessageOutcome.IGNORED, REASON_UNKNOWN_ASSET)
        elif not asset.active:
            outcome = Outcome(MessageOutcome.IGNORED, REASON_INACTIVE_ASSET)
        else:
            result = await asset_reconcile(
                asset=asset, integrations=integrations, actor=actor
            )
            if result.errors:
                # A peer failed: try again later, as for any message.
                state = await db(inbox.inbound_defer)(
                    message_id=message.pk, error=result.errors[0]
                )
                metrics.RETRIES.labels("message").inc()
                log.warning(
                    "queued reconciliation deferred: %s",
                    result.errors[0],
                    extra={**extra, "state": state},
                )
                return Outcome(state, result.errors[0])
            outcome = Outcome(
                MessageOutcome.PROCESSED,
                f"published {result.published}, already on chain "
                f"{result.already_present}, pending {result.pending}, rejected "
                f"{result.rejected}",
            )
    await _finish(message.pk, outcome, kind=None, asset_did=did_text)
    metrics.MESSAGES.labels(MessageKind.RECONCILE, outcome.outcome).inc()
    log.info(
        "queued reconciliation %s: %s", outcome.outcome, outcome.reason, extra=extra
    )
    return outcome


async def _asset_at(
    address: str, assets: Mapping[str, Asset | None] | None
) -> Asset | None:
    """The asset holding `address`: from the lease's assets when it has looked."""
    if assets is not None and address in assets:
        return assets[address]
    return await db(selectors.asset_for_address)(address)


async def _finish(
    message_id: int,
    outcome: Outcome,
    *,
    kind: str | None,
    asset_did: str = "",
    claim_id: str = "",
) -> None:
    await db(inbox.inbound_finish)(
        message_id=message_id,
        outcome=outcome.outcome,
        reason=outcome.reason,
        kind=kind,
        asset_did=asset_did,
        claim_id=claim_id,
        record_id=outcome.record_id,
    )


async def _dispatch(
    hint: wire.InboundHint,
    integrations: Integrations,
    actor: Actor,
    assets: Mapping[str, Asset | None] | None = None,
) -> Outcome:
    asset = await _asset_at(hint.did.address, assets)
    if asset is None and hint.type is wire.MessageType.REJECT:
        # Sent to the issuers' subjects; it concerns us if it names one of our claims.
        asset = await db(selectors.asset_for_claim_id)(hint.claim_id)
    if asset is None:
        return Outcome(MessageOutcome.IGNORED, REASON_UNKNOWN_ASSET)
    if not asset.active:
        return Outcome(MessageOutcome.IGNORED, REASON_INACTIVE_ASSET)
    if hint.type is wire.MessageType.PREQUALIFICATION:
        return await claim_request_prequalification(
            asset=asset, integrations=integrations, actor=actor
        )
    if hint.type is wire.MessageType.ISSUE:
        return await claim_accept_issued(
            asset=asset,
            claim_id=hint.claim_id,
            integrations=integrations,
            actor=actor,
            legacy_token=hint.issued_token if hint.legacy else "",
        )
    if hint.type is wire.MessageType.REJECT:
        return await claim_mark_rejected(
            asset=asset, claim_id=hint.claim_id, integrations=integrations, actor=actor
        )
    return Outcome(MessageOutcome.IGNORED, REASON_FOR_ISSUERS)
