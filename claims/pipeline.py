"""The pipeline's steps: file a request, accept issued, reject, advance, publish.

Each step takes an `Integrations` bundle, calls the peers, and records every move
through the state machine in `claims.transitions` (in a database thread through
`claims.dbthreads.db`). The consumer, reconciliation, the `retry_claims` command and
the console all call these same functions (protocol.md §1, §5, §8).

Errors: an integration error carries `permanent`; a permanent one ends the step as
failed (or rejected) with a readable reason, anything else is transient and is
retried later with backoff. A `Transient` raised out of a step tells the inbox worker
to retry the message; once a claim record exists, its own retry schedule takes over.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from assets.models import Asset
from claims import (
    failures,
    issued,
    leases,
    metrics,
    selectors,
    transitions,
)
from claims.dbthreads import db
from claims.integrations import Integrations
from claims.models import (
    Actor,
    ClaimRecord,
    ClaimStatus,
    MessageOutcome,
)
from claims.peer_calls import (
    asset_signer,
    find_service_by_hash,
    log_extra,
    resolve_document,
    role_definition,
    service_entries,
)
from claims.verify import fetch_claim, verify_claim
from evops.integrations.cache_server import RoleClaim
from evops.integrations.credential_store import confirm_stored
from evops.protocol import erc1056
from evops.protocol.credentials import (
    RejectedCredential,
    RejectionReason,
    token_sha256,
)
from evops.protocol.dids import DID

log = logging.getLogger(__name__)


REASON_UNKNOWN_CLAIM = "unknown_claim"
REASON_CLAIM_NOT_ISSUED = "claim_not_issued"
REASON_CLAIM_NOT_REJECTED = "claim_not_rejected"
REASON_SUBJECT_MISMATCH = "claim_subject_mismatch"
REASON_CREDENTIAL_REJECTED = "credential_rejected"
REASON_ISSUER_REJECTED = "issuer_rejected"


# Outcomes of filing a prequalification request (stored as the message's reason).
REASON_FILED = "filed"
REASON_ALREADY_PENDING = "already pending"


class Transient(Exception):
    """A step failed in a way that a later retry may fix."""


@dataclass(frozen=True)
class Outcome:
    """What became of one inbound message."""

    outcome: str
    reason: str = ""
    record_id: int | None = None


def is_permanent(exc: BaseException) -> bool:
    """Integration errors say so with `.permanent`; anything else may pass."""
    return getattr(exc, "permanent", False) is True


async def claim_request_prequalification(
    *, asset: Asset, integrations: Integrations, actor: Actor
) -> Outcome:
    """File the prequalification claim request as the asset (protocol.md §1 step 3).

    A pending request for the same role already on the cache server is not an error
    (its 403 quirk); the record is keyed by claim id, so filing twice records once.
    """
    role = await role_definition(
        integrations, asset, integrations.prequalification_role
    )
    signer = await asset_signer(integrations, asset)
    with metrics.timed(metrics.CACHE_SERVER_LATENCY, "request_claim"):
        result = await integrations.cache.request_claim(signer, asset.did, role=role)
    claim_id = result.claim_id or ""
    if not claim_id:
        return Outcome(MessageOutcome.PROCESSED, "a pending request already exists")
    record, created = await db(transitions.claim_record_requested)(
        asset=asset,
        claim_id=claim_id,
        role=role.namespace,
        role_version=role.version,
        actor=actor,
        details={"already_existed": result.already_existed},
    )
    log.info(
        "claim request filed",
        extra=log_extra(asset, claim_id=claim_id, existed=result.already_existed),
    )
    pending = result.already_existed or not created
    reason = REASON_ALREADY_PENDING if pending else REASON_FILED
    return Outcome(MessageOutcome.PROCESSED, reason, record.pk)


async def claim_accept_issued(
    *,
    asset: Asset,
    claim_id: str,
    integrations: Integrations,
    actor: Actor,
    claim: RoleClaim | None = None,
    legacy_token: str = "",
    details: dict[str, Any] | None = None,
) -> Outcome:
    """Verify an issued credential, record it, and carry it to the chain.

    Every path ends in the one check (`claims.verify.verify_claim`, protocol.md §8):
    the claim as the cache server holds it now (`GET /v1/claim/<id>`, or the
    `claim` the reconciler fetched a moment ago) backs the publication, never a
    message. A legacy message's token is only a candidate: it must be the hub's own.

    What a message says but the hub does not back (an unknown claim, another
    subject, a claim not accepted, a token that is not the hub's) refuses the
    message and leaves the claim alone: a forged message must not spoil a genuine
    pending claim. A token the hub does hold that fails the checks (signature,
    issuer, type, expiry) marks the claim rejected with the reason.
    """
    details = dict(details or {})
    if claim is None:
        claim = await fetch_claim(integrations, asset, claim_id)
    if claim is not None and claim.is_rejected and not legacy_token:
        return await claim_mark_rejected(
            asset=asset,
            claim_id=claim_id,
            integrations=integrations,
            actor=actor,
            claim=claim,
        )
    if (
        claim is not None
        and not claim.issued_token
        and not legacy_token
        and _same_account(claim.subject or claim.requester, asset)
    ):
        return Outcome(MessageOutcome.IGNORED, REASON_CLAIM_NOT_ISSUED)
    result = await verify_claim(
        integrations,
        asset=asset,
        claim_id=claim_id,
        claim=claim,
        presented_token=legacy_token or None,
    )
    if isinstance(result, RejectedCredential):
        reason = result.reason.value
        detail = result.detail or reason
        log.warning(
            "issued credential refused: %s",
            reason,
            extra=log_extra(asset, claim_id=claim_id, reason=reason),
        )
        if legacy_token or result.reason in _NOT_THE_HUBS:
            # Only the message is refused: its row carries the whole reason.
            return Outcome(
                MessageOutcome.REJECTED,
                f"{REASON_CREDENTIAL_REJECTED}: {reason}: {detail}",
            )
        assert claim is not None and claim.issued_token is not None
        sha = token_sha256(claim.issued_token)
        record, _ = await db(transitions.claim_record_rejected)(
            asset=asset,
            claim_id=claim_id,
            reason=reason,
            message=f"Issued credential refused: {detail}",
            actor=actor,
            details={**details, "token_sha256": sha},
            token_sha256=sha,
        )
        # The detail is on the claim record; the message names the reason.
        return Outcome(
            MessageOutcome.REJECTED,
            f"{REASON_CREDENTIAL_REJECTED}: {reason}",
            record.pk,
        )
    assert claim is not None and claim.issued_token is not None
    token = claim.issued_token
    sha = result.token_sha256 or token_sha256(token)
    if result.issuer_proof:
        details["issuer_proof"] = list(result.issuer_proof)
    # The re-issue check, requested -> issued and the token's facts (claims.issued).
    record = await db(issued.claim_record_verified)(
        asset=asset,
        claim_id=claim_id,
        token=token,
        token_sha256=sha,
        issuer_did=result.issuer,
        role=result.claim_type,
        role_version=result.claim_type_version,
        actor=actor,
        details=details,
        hub_expiry=claim.raw.get("expirationTimestamp"),
    )
    record.asset = asset  # the leased asset, its sealed key loaded
    status = await claim_advance(
        record_id=record.pk, integrations=integrations, actor=actor, record=record
    )
    reason = status or record.status
    return Outcome(MessageOutcome.PROCESSED, f"claim {reason}", record.pk)


# Refusals that say the message is not backed by the hub: the claim is not touched.
_NOT_THE_HUBS = frozenset(
    {
        RejectionReason.CLAIM_UNKNOWN,
        RejectionReason.CLAIM_SUBJECT_MISMATCH,
        RejectionReason.CLAIM_NOT_ACCEPTED,
        RejectionReason.TOKEN_MISMATCH,
    }
)


def _same_account(did_text: str, asset: Asset) -> bool:
    try:
        return DID.parse(did_text).address == asset.address
    except Exception:
        return False


async def claim_mark_rejected(
    *,
    asset: Asset,
    claim_id: str,
    integrations: Integrations,
    actor: Actor,
    claim: RoleClaim | None = None,
) -> Outcome:
    """A rejection notice, checked with the cache server, marks the claim rejected."""
    if claim is None:
        signer = await asset_signer(integrations, asset)
        with metrics.timed(metrics.CACHE_SERVER_LATENCY, "get_claim"):
            claim = await integrations.cache.get_claim(signer, asset.did, claim_id)
    if claim is None:
        return Outcome(MessageOutcome.REJECTED, REASON_UNKNOWN_CLAIM)
    if not claim.is_rejected:
        return Outcome(MessageOutcome.IGNORED, REASON_CLAIM_NOT_REJECTED)
    text = claim.rejection_reason or "no reason given"
    record, _ = await db(transitions.claim_record_rejected)(
        asset=asset,
        claim_id=claim_id,
        reason=REASON_ISSUER_REJECTED,
        message=f"Rejected by the issuer: {text}",
        actor=actor,
    )
    return Outcome(MessageOutcome.PROCESSED, "claim rejected", record.pk)


async def claim_advance(
    *,
    record_id: int,
    integrations: Integrations,
    actor: Actor,
    record: ClaimRecord | None = None,
) -> str:
    """Carry a record as far as it goes: issued → stored → publishing → published.

    Returns the status this call left the record in, or "" when another worker
    holds it. Safe to call from any number of places at once: each step is a CAS.
    `record` is the row as the caller just read or wrote it (with its asset), which
    saves reading it again; each move's CAS still decides.
    """
    if record is None:
        record = await _load(record_id)
    if record.status == ClaimStatus.ISSUED:
        try:
            signer = await asset_signer(integrations, record.asset)
            store = integrations.store_for(signer, record.asset.did)
            with metrics.timed(metrics.STORE_LATENCY):
                cid = await store.put(record.token)
                # What goes on chain must be readable as this very token: a CID
                # that is not one, or content that is not the token, is refused
                # (transient: storing again may fix it) before anything is written.
                await confirm_stored(store, cid, record.token)
        except Exception as exc:
            return await _step_failed(record, ClaimStatus.ISSUED, exc, actor, "store")
        if await db(transitions.claim_record_stored)(
            record_id=record.pk, cid=cid, actor=actor
        ):
            record.status, record.cid = ClaimStatus.STORED, cid
        else:
            record = await _load(record_id)
            if record.status != ClaimStatus.STORED:
                return ""
    if record.status != ClaimStatus.STORED:
        return str(record.status)
    if not await db(transitions.claim_begin_publishing)(
        record_id=record.pk, actor=actor
    ):
        return ""
    with leases.holding(record.pk):
        # Not read again: the token and CID are what this call verified and
        # stored, and a record only changes them by moving, which the CAS saw.
        record.status = ClaimStatus.PUBLISHING
        return await _publish(record, integrations, actor)


async def _load(record_id: int) -> ClaimRecord:
    return await db(ClaimRecord.objects.select_related("asset").get)(pk=record_id)


async def _step_failed(
    record: ClaimRecord, status: str, exc: BaseException, actor: Actor, what: str
) -> str:
    extra = log_extra(record.asset, claim_id=record.claim_id, step=what)
    if is_permanent(exc):
        log.error("%s failed permanently: %s", what, exc, extra=extra)
        await db(failures.claim_fail)(
            record_id=record.pk, expected=[status], error=exc, actor=actor
        )
        if what == "publish":
            metrics.PUBLICATIONS.labels("failed").inc()
        return ClaimStatus.FAILED
    log.warning("%s failed, will retry: %s", what, exc, extra=extra)
    metrics.RETRIES.labels(what).inc()
    back_to = ClaimStatus.STORED if status == ClaimStatus.PUBLISHING else status
    tx_hash = getattr(exc, "tx_hash", None)
    details = {"tx_hash": tx_hash} if tx_hash else None
    return await db(failures.claim_schedule_retry)(
        record_id=record.pk,
        expected=status,
        back_to=back_to,
        error=exc,
        actor=actor,
        details=details,
    )


async def _publish(
    record: ClaimRecord, integrations: Integrations, actor: Actor
) -> str:
    """The one chain write of a record, guarded by the CAS into `publishing`.

    Before writing, the document is resolved from chain: if an entry with the
    token's hash is there (an earlier attempt landed, or the reconciler raced us),
    the record is marked published without a write. After writing, the document is
    resolved again to confirm.
    """
    asset = record.asset
    extra = log_extra(asset, claim_id=record.claim_id)
    try:
        document = await resolve_document(integrations, asset.did)
    except Exception as exc:
        return await _step_failed(record, ClaimStatus.PUBLISHING, exc, actor, "resolve")
    present = find_service_by_hash(document, record.token_sha256)
    if present is not None:
        await db(transitions.claim_mark_published)(
            record_id=record.pk,
            actor=actor,
            service_id=str(present.get("id", "")),
            message="Already in the DID document; nothing written.",
        )
        metrics.PUBLICATIONS.labels("already_present").inc()
        log.info("credential already published", extra=extra)
        return ClaimStatus.PUBLISHED
    entries, service_id = service_entries(document), ""
    if entries:  # none (a new asset): no entry to reuse, nothing to read
        service_id = await db(selectors.reusable_service_id)(
            asset_id=asset.pk,
            role=record.role,
            role_version=record.role_version,
            exclude_pk=record.pk,
            entries=entries,
        )
    service_id = service_id or str(uuid.uuid4())
    value = erc1056.service_value(
        service_id=service_id, cid=record.cid, token_sha256=record.token_sha256
    )
    try:
        signer = await asset_signer(integrations, asset)
        with metrics.timed(metrics.CHAIN_LATENCY, "publish"):
            result = await integrations.chain.publish_attribute(
                signer,
                name=erc1056.attribute_name(),
                value=value,
                validity=erc1056.VALIDITY_FOREVER,
            )
    except Exception as exc:
        return await _step_failed(record, ClaimStatus.PUBLISHING, exc, actor, "publish")
    tx_hash = str(result.tx_hash)
    log.info("service entry written", extra={**extra, "tx_hash": tx_hash})
    # Kept on the row with its note: if confirmation fails, the next attempt finds
    # the entry by hash and must not write again.
    await db(transitions.claim_record_written)(
        record_id=record.pk,
        actor=actor,
        service_id=service_id,
        result=result,
        attribute_value=value,
    )
    try:
        confirmed = find_service_by_hash(
            await resolve_document(integrations, asset.did), record.token_sha256
        )
    except Exception as exc:
        confirmed = None
        error: BaseException | str = exc
    else:
        error = f"transaction {tx_hash} mined but the entry is not resolvable yet"
    if confirmed is None:
        return await _step_failed(
            record, ClaimStatus.PUBLISHING, Transient(str(error)), actor, "confirm"
        )
    await db(transitions.claim_mark_published)(
        record_id=record.pk,
        actor=actor,
        service_id=service_id,
        tx_hash=tx_hash,
        block_number=result.block_number,
        message=f"Published in block {result.block_number}; confirmed from chain.",
    )
    metrics.PUBLICATIONS.labels("written").inc()
    log.info("credential published", extra={**extra, "tx_hash": tx_hash})
    return ClaimStatus.PUBLISHED


async def claim_process_due(
    *, record_id: int, integrations: Integrations, actor: Actor
) -> str:
    """A record whose retry time came (or a staff retry): carry it on."""
    record = await _load(record_id)
    if record.status == ClaimStatus.REQUESTED:
        # A staff retry of a claim that failed before its credential arrived:
        # read it again from the cache server, as an issue notice would.
        await claim_accept_issued(
            asset=record.asset,
            claim_id=record.claim_id,
            integrations=integrations,
            actor=actor,
            details={"source": "retry"},
        )
        # Not issued yet: wait for the notice (or the next reconciliation) again.
        await db(
            ClaimRecord.objects.filter(
                pk=record_id, status=ClaimStatus.REQUESTED
            ).update
        )(next_retry_at=None)
        record = await _load(record_id)
        return str(record.status)
    if record.status == ClaimStatus.PUBLISHING:
        # Leased after its holder's lease ran out (`ClaimRecord.objects.lease_due`).
        await db(transitions.claim_note_resumed)(record_id=record.pk, actor=actor)
        metrics.RETRIES.labels("resume").inc()
        with leases.holding(record.pk):
            return await _publish(record, integrations, actor)
    return await claim_advance(
        record_id=record_id, integrations=integrations, actor=actor
    )
