"""The pipeline's async flows: prequalification request, issued credential, rejection,
publication and reconciliation (protocol.md §1, §5, §8).

Each flow takes an `Integrations` bundle, calls the external systems, and records
every step through the synchronous state machine in `claims.services` (run in a
database thread through `claims.dbthreads.db`: the listener's pool, or
`sync_to_async`). The listener's workers, the `reconcile_claims` and
`retry_claims` commands and the console all call these same functions.

Errors: an integration error carries `permanent`; a permanent one ends the step as
failed (or rejected) with a readable reason, anything else is transient and is
retried later with backoff. A `Transient` raised out of a flow tells the inbox worker
to retry the message; once a claim record exists, its own retry schedule takes over.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from assets.models import Asset, SignerBackend
from claims import metrics, selectors, services
from claims.dbthreads import Coalesced, db
from claims.integrations import Integrations
from claims.models import (
    ClaimRecord,
    ClaimStatus,
    EventActor,
    MessageKind,
    MessageOutcome,
)
from claims.services import Actor
from evops.integrations import nats
from evops.protocol import erc1056
from evops.protocol.credentials import RejectionReason
from evops.protocol.dids import DID

log = logging.getLogger(__name__)

REASON_UNKNOWN_ASSET = "unknown_asset"
REASON_INACTIVE_ASSET = "inactive_asset"
REASON_UNKNOWN_CLAIM = "unknown_claim"
REASON_CLAIM_NOT_ISSUED = "claim_not_issued"
REASON_CLAIM_NOT_REJECTED = "claim_not_rejected"
REASON_SUBJECT_MISMATCH = "claim_subject_mismatch"
REASON_CREDENTIAL_REJECTED = "credential_rejected"
REASON_FOR_ISSUERS = services.REASON_FOR_ISSUERS
REASON_ISSUER_REJECTED = "issuer_rejected"
# Outcomes of filing a prequalification request (stored as the message's reason).
REASON_FILED = "filed"
REASON_ALREADY_PENDING = "already pending"

_ROLE_TTL = 300.0
_KIND_BY_TYPE = {
    nats.MessageType.PREQUALIFICATION: MessageKind.PREQUALIFICATION,
    nats.MessageType.ISSUE: MessageKind.ISSUE,
    nats.MessageType.REJECT: MessageKind.REJECT,
    nats.MessageType.REQUEST: MessageKind.REQUEST,
}


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


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _log_extra(asset: Asset | None = None, **context: Any) -> dict[str, Any]:
    extra = {key: value for key, value in context.items() if value}
    if asset is not None:
        extra["asset_did"] = asset.did
    return extra


# --- small async wrappers over the integrations --------------------------------------


async def _signer(integrations: Integrations, asset: Asset) -> Any:
    if asset.signer_backend == SignerBackend.LOCAL_ENCRYPTED and Asset.key.is_cached(
        asset
    ):
        # The sealed key came with the asset: building the signer reads nothing.
        return integrations.signer_for(asset)
    return await db(integrations.signer_for)(asset)


_roles: dict[tuple[int, str], tuple[float, Any]] = {}


async def _role(integrations: Integrations, asset: Asset, namespace: str) -> Any:
    """The role definition, cached for a few minutes (roles change rarely)."""
    key = (id(integrations.cache), namespace)
    cached = _roles.get(key)
    if cached is not None and time.monotonic() - cached[0] < _ROLE_TTL:
        return cached[1]
    signer = await _signer(integrations, asset)
    with metrics.timed(metrics.CACHE_SERVER_LATENCY, "role"):
        role = await integrations.cache.role(signer, asset.did, namespace)
    _roles[key] = (time.monotonic(), role)
    return role


def forget_roles() -> None:
    _roles.clear()


def _service_entries(document: dict[str, Any]) -> list[dict[str, Any]]:
    entries = document.get("service") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if isinstance(entry, dict)]


def find_service_by_hash(document: dict[str, Any], sha: str) -> dict[str, Any] | None:
    """The document's service entry whose `hash` is `sha` (protocol.md §8)."""
    for entry in _service_entries(document):
        if str(entry.get("hash", "")).lower().removeprefix("0x") == sha:
            return entry
    return None


async def _resolve(integrations: Integrations, did: str) -> dict[str, Any]:
    with metrics.timed(metrics.CHAIN_LATENCY, "resolve"):
        return await integrations.chain.resolve_document(did)


async def _check_with_delegates(
    integrations: Integrations, token: str, *, asset: Asset, role: Any
) -> Any:
    """`_check`, and for a signature not by the issuer's own key, a second look.

    An issuer may sign with a `veriKey` delegate listed in its DID document
    (protocol.md §3; the cache server accepts those), so a bad signature is checked
    again against the issuer's document resolved from chain. Only then: most tokens
    are signed by the issuer's key, and a forged one costs one resolution.
    """
    result = _check(integrations, token, asset=asset, role=role)
    if _reason_text(result) != RejectionReason.BAD_SIGNATURE:
        return result
    issuer = _issuer_of(token)
    if issuer is None or issuer.chain != DID.parse(asset.did).chain:
        return result
    document = await _resolve(integrations, issuer.canonical)
    return _check(integrations, token, asset=asset, role=role, issuer_document=document)


def _issuer_of(token: str) -> DID | None:
    from evops.protocol.jwt import decode_token

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
    role: Any,
    issuer_document: dict[str, Any] | None = None,
) -> Any:
    return integrations.check_credential(
        token,
        issuer_document=issuer_document,
        asset_did=asset.did,
        allowed_claim_types=integrations.allowed_claim_types,
        # The protocol core reads the raw role JSON (`definition.issuer`).
        role_definition=getattr(role, "raw", role),
        now=integrations.now(),
    )


def _is_accepted(result: Any) -> bool:
    return bool(getattr(result, "accepted", False))


def _reason_text(result: Any) -> str:
    reason = getattr(result, "reason", "")
    return str(getattr(reason, "value", reason))


def _claim_type_of(token: str) -> str:
    """The claimType inside a token (to pick the role definition to check against)."""
    from evops.protocol.jwt import decode_token

    try:
        claim_data = decode_token(token).payload.get("claimData")
    except Exception:
        return ""
    if isinstance(claim_data, dict) and isinstance(claim_data.get("claimType"), str):
        return str(claim_data["claimType"])
    return ""


# The two writes every message of a burst makes, each shared by the workers writing
# at the same moment (see `claims.dbthreads.Coalesced`).
_record_requested = Coalesced(services.claim_record_requested_many)
_finish_together = Coalesced(services.inbound_finish_many)


# --- prequalification request ---------------------------------------------------------


async def claim_request_prequalification(
    *, asset: Asset, integrations: Integrations, actor: Actor
) -> Outcome:
    """File the prequalification claim request as the asset (protocol.md §1 step 3).

    A pending request for the same role already on the cache server is not an error
    (its 403 quirk); the record is keyed by claim id, so filing twice records once.
    """
    role = await _role(integrations, asset, integrations.prequalification_role)
    signer = await _signer(integrations, asset)
    with metrics.timed(metrics.CACHE_SERVER_LATENCY, "request_claim"):
        result = await integrations.cache.request_claim(signer, asset.did, role=role)
    claim_id = result.claim_id or ""
    if not claim_id:
        return Outcome(MessageOutcome.PROCESSED, "a pending request already exists")
    record, created = await _record_requested(
        services.RequestedClaim(
            asset=asset,
            claim_id=claim_id,
            role=role.namespace,
            role_version=role.version,
            actor=actor,
            details={"already_existed": result.already_existed},
        )
    )
    log.info(
        "claim request filed",
        extra=_log_extra(asset, claim_id=claim_id, existed=result.already_existed),
    )
    pending = result.already_existed or not created
    reason = REASON_ALREADY_PENDING if pending else REASON_FILED
    return Outcome(MessageOutcome.PROCESSED, reason, record.pk)


# --- issued credential ----------------------------------------------------------------


async def claim_accept_issued(
    *,
    asset: Asset,
    claim_id: str,
    integrations: Integrations,
    actor: Actor,
    claim: Any = None,
    legacy_token: str = "",
    details: dict[str, Any] | None = None,
) -> Outcome:
    """Verify an issued credential, record it, and carry it to the chain.

    The token comes from the cache server (`GET /v1/claim/<id>`, or the `claim`
    already fetched by the reconciler), or, for a legacy message, from the message;
    either way it is checked by the protocol core (§8) before anything is stored.
    A token from the cache server that fails the checks marks the claim rejected; a
    legacy message's token that fails is refused without touching the claim (a
    forged message must not be able to spoil a genuine pending claim).
    """
    details = dict(details or {})
    if legacy_token:
        token = legacy_token
        claim_type = _claim_type_of(token)
    else:
        if claim is None:
            signer = await _signer(integrations, asset)
            with metrics.timed(metrics.CACHE_SERVER_LATENCY, "get_claim"):
                claim = await integrations.cache.get_claim(signer, asset.did, claim_id)
        if claim is None:
            return Outcome(MessageOutcome.REJECTED, REASON_UNKNOWN_CLAIM)
        subject = claim.subject or getattr(claim, "requester", "")
        if subject and not _same_account(subject, asset):
            return Outcome(MessageOutcome.REJECTED, REASON_SUBJECT_MISMATCH)
        if claim.is_rejected:
            return await claim_mark_rejected(
                asset=asset,
                claim_id=claim_id,
                integrations=integrations,
                actor=actor,
                claim=claim,
            )
        if not claim.issued_token:
            return Outcome(MessageOutcome.IGNORED, REASON_CLAIM_NOT_ISSUED)
        token = claim.issued_token
        claim_type = claim.claim_type or _claim_type_of(token)
    namespace = (
        claim_type
        if claim_type in integrations.allowed_claim_types
        else integrations.prequalification_role
    )
    role = await _role(integrations, asset, namespace)
    result = await _check_with_delegates(integrations, token, asset=asset, role=role)
    sha = token_sha256(token)
    if not _is_accepted(result):
        reason = _reason_text(result)
        detail = str(getattr(result, "detail", "") or reason)
        log.warning(
            "issued credential rejected: %s",
            reason,
            extra=_log_extra(asset, claim_id=claim_id, reason=reason),
        )
        if legacy_token:
            return Outcome(
                MessageOutcome.REJECTED, f"{REASON_CREDENTIAL_REJECTED}: {reason}"
            )
        record, _ = await db(services.claim_record_rejected)(
            asset=asset,
            claim_id=claim_id,
            reason=reason,
            message=f"Issued credential refused: {detail}",
            actor=actor,
            details={**details, "token_sha256": sha},
            token_sha256=sha,
        )
        return Outcome(
            MessageOutcome.REJECTED,
            f"{REASON_CREDENTIAL_REJECTED}: {reason}",
            record.pk,
        )
    record, _ = await db(services.claim_record_issued)(
        asset=asset,
        claim_id=claim_id,
        token=token,
        token_sha256=getattr(result, "token_sha256", "") or sha,
        issuer_did=str(getattr(result, "issuer", "")),
        role=str(getattr(result, "claim_type", "") or claim_type),
        role_version=_int_or_none(getattr(result, "claim_type_version", None)),
        actor=actor,
        details=details,
    )
    status = await claim_advance(
        record_id=record.pk, integrations=integrations, actor=actor
    )
    reason = status or record.status
    return Outcome(MessageOutcome.PROCESSED, f"claim {reason}", record.pk)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _same_account(did_text: str, asset: Asset) -> bool:
    try:
        return DID.parse(did_text).address == asset.address
    except Exception:
        return False


# --- rejection ------------------------------------------------------------------------


async def claim_mark_rejected(
    *,
    asset: Asset,
    claim_id: str,
    integrations: Integrations,
    actor: Actor,
    claim: Any = None,
) -> Outcome:
    """A rejection notice, checked with the cache server, marks the claim rejected."""
    if claim is None:
        signer = await _signer(integrations, asset)
        with metrics.timed(metrics.CACHE_SERVER_LATENCY, "get_claim"):
            claim = await integrations.cache.get_claim(signer, asset.did, claim_id)
    if claim is None:
        return Outcome(MessageOutcome.REJECTED, REASON_UNKNOWN_CLAIM)
    if not claim.is_rejected:
        return Outcome(MessageOutcome.IGNORED, REASON_CLAIM_NOT_REJECTED)
    text = claim.rejection_reason or "no reason given"
    record, _ = await db(services.claim_record_rejected)(
        asset=asset,
        claim_id=claim_id,
        reason=REASON_ISSUER_REJECTED,
        message=f"Rejected by the issuer: {text}",
        actor=actor,
    )
    return Outcome(MessageOutcome.PROCESSED, "claim rejected", record.pk)


# --- storage and publication ----------------------------------------------------------


async def claim_advance(
    *, record_id: int, integrations: Integrations, actor: Actor
) -> str:
    """Carry a record as far as it goes: issued → stored → publishing → published.

    Returns the status this call left the record in, or "" when another worker
    holds it. Safe to call from any number of places at once: each step is a CAS.
    """
    record = await _load(record_id)
    if record.status == ClaimStatus.ISSUED:
        try:
            signer = await _signer(integrations, record.asset)
            store = integrations.store_for(signer, record.asset.did)
            with metrics.timed(metrics.STORE_LATENCY):
                cid = await store.put(record.token)
        except Exception as exc:
            return await _step_failed(record, ClaimStatus.ISSUED, exc, actor, "store")
        if not await db(services.claim_record_stored)(
            record_id=record.pk, cid=cid, actor=actor
        ):
            record = await _load(record_id)
            if record.status != ClaimStatus.STORED:
                return ""
        record.status = ClaimStatus.STORED
    if record.status != ClaimStatus.STORED:
        return str(record.status)
    if not await db(services.claim_begin_publishing)(record_id=record.pk, actor=actor):
        return ""
    return await _publish(await _load(record_id), integrations, actor)


async def _load(record_id: int) -> ClaimRecord:
    return await db(ClaimRecord.objects.select_related("asset").get)(pk=record_id)


async def _step_failed(
    record: ClaimRecord, status: str, exc: BaseException, actor: Actor, what: str
) -> str:
    extra = _log_extra(record.asset, claim_id=record.claim_id, step=what)
    if is_permanent(exc):
        log.error("%s failed permanently: %s", what, exc, extra=extra)
        await db(services.claim_fail)(
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
    return await db(services.claim_schedule_retry)(
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
    extra = _log_extra(asset, claim_id=record.claim_id)
    try:
        document = await _resolve(integrations, asset.did)
    except Exception as exc:
        return await _step_failed(record, ClaimStatus.PUBLISHING, exc, actor, "resolve")
    present = find_service_by_hash(document, record.token_sha256)
    if present is not None:
        await db(services.claim_mark_published)(
            record_id=record.pk,
            actor=actor,
            service_id=str(present.get("id", "")),
            message="Already in the DID document; nothing written.",
        )
        metrics.PUBLICATIONS.labels("already_present").inc()
        log.info("credential already published", extra=extra)
        return ClaimStatus.PUBLISHED
    service_id = await db(selectors.reusable_service_id)(
        asset_id=asset.pk,
        role=record.role,
        role_version=record.role_version,
        exclude_pk=record.pk,
        entries=_service_entries(document),
    ) or str(uuid.uuid4())
    value = erc1056.service_value(
        service_id=service_id, cid=record.cid, token_sha256=record.token_sha256
    )
    try:
        signer = await _signer(integrations, asset)
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
    await db(services.claim_note)(
        record.pk,
        actor=actor,
        kind="written",
        message=f"Service entry {service_id} written in {tx_hash}.",
        details={
            "tx_hash": tx_hash,
            "block_number": result.block_number,
            "gas_used": getattr(result, "gas_used", None),
            "mode": getattr(result, "mode", ""),
        },
    )
    # Keep what was written on the row now: if confirmation fails, the next attempt
    # finds the entry by hash and must not write again.
    await db(ClaimRecord.objects.filter(pk=record.pk).update)(
        tx_hash=tx_hash, block_number=result.block_number, service_id=service_id
    )
    try:
        confirmed = find_service_by_hash(
            await _resolve(integrations, asset.did), record.token_sha256
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
    await db(services.claim_mark_published)(
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


# --- inbound messages -----------------------------------------------------------------


async def inbound_process(
    *,
    message_id: int,
    integrations: Integrations,
    actor: Actor,
    message: Any = None,
    assets: Mapping[str, Asset | None] | None = None,
) -> Outcome:
    """Parse one stored message, act on it, and record its outcome.

    Per-message errors never escape: malformed input is recorded as rejected,
    transient failures put the message back with a backoff, anything permanent
    marks it failed with the reason. `message`, the row as leased (subject and
    payload loaded), saves reading it again; `assets`, the assets loaded with the
    lease by address (`services.inbound_lease_due_with_assets`), saves looking the
    asset up.
    """
    from claims.models import InboundMessage

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
    limit = 1 << 30  # size was enforced when the message was recorded
    try:
        hint = nats.parse_message(
            message.subject, message.payload.encode("utf-8"), limit=limit
        )
    except nats.MessageError as exc:
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
            outcome = Outcome(MessageOutcome.FAILED, services.readable_error(exc))
            log.error("message failed: %s", exc, extra={**extra, **context})
        else:
            state = await db(services.inbound_defer)(message_id=message_id, error=exc)
            metrics.RETRIES.labels("message").inc()
            log.warning(
                "message deferred: %s", exc, extra={**extra, **context, "state": state}
            )
            if state == MessageOutcome.PENDING:
                return Outcome(MessageOutcome.PENDING, services.readable_error(exc))
            metrics.MESSAGES.labels(hint.type.value, MessageOutcome.FAILED).inc()
            return Outcome(MessageOutcome.FAILED, services.readable_error(exc))
    await _finish(message_id, outcome, kind=kind, **context)
    metrics.MESSAGES.labels(hint.type.value, outcome.outcome).inc()
    log.info(
        "message %s: %s", outcome.outcome, outcome.reason, extra={**extra, **context}
    )
    return outcome


async def _inbound_reconcile(
    message: Any,
    integrations: Integrations,
    actor: Actor,
    assets: Mapping[str, Asset | None] | None,
) -> Outcome:
    """A reconciliation of one asset, queued in the console (`inbound_enqueue`)."""
    extra = {"subject": message.subject, "inbound_id": message.pk}
    did_text = ""
    try:
        did = services.queued_did(message.payload)
    except nats.MessageError as exc:
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
                state = await db(services.inbound_defer)(
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
    await _finish_together(
        services.Finish(
            message_id=message_id,
            outcome=outcome.outcome,
            reason=outcome.reason,
            kind=kind,
            asset_did=asset_did,
            claim_id=claim_id,
            record_id=outcome.record_id,
        )
    )


async def _dispatch(
    hint: nats.InboundHint,
    integrations: Integrations,
    actor: Actor,
    assets: Mapping[str, Asset | None] | None = None,
) -> Outcome:
    asset = await _asset_at(hint.did.address, assets)
    if asset is None and hint.type is nats.MessageType.REJECT:
        # Sent to the issuers' subjects; it concerns us if it names one of our claims.
        asset = await db(selectors.asset_for_claim_id)(hint.claim_id)
    if asset is None:
        return Outcome(MessageOutcome.IGNORED, REASON_UNKNOWN_ASSET)
    if not asset.active:
        return Outcome(MessageOutcome.IGNORED, REASON_INACTIVE_ASSET)
    if hint.type is nats.MessageType.PREQUALIFICATION:
        return await claim_request_prequalification(
            asset=asset, integrations=integrations, actor=actor
        )
    if hint.type is nats.MessageType.ISSUE:
        return await claim_accept_issued(
            asset=asset,
            claim_id=hint.claim_id,
            integrations=integrations,
            actor=actor,
            legacy_token=hint.issued_token if hint.legacy else "",
        )
    if hint.type is nats.MessageType.REJECT:
        return await claim_mark_rejected(
            asset=asset, claim_id=hint.claim_id, integrations=integrations, actor=actor
        )
    return Outcome(MessageOutcome.IGNORED, REASON_FOR_ISSUERS)


# --- reconciliation -------------------------------------------------------------------


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
        signer = await _signer(integrations, asset)
        with metrics.timed(metrics.CACHE_SERVER_LATENCY, "accepted_claims"):
            claims = await integrations.cache.accepted_claims(signer, asset.did)
        claims = [
            claim for claim in claims if claim.issued_token and not claim.is_rejected
        ]
        if not claims:
            metrics.RECONCILE_RUNS.labels("nothing").inc()
            return result
        document = await _resolve(integrations, asset.did)
        for claim in claims:
            sha = token_sha256(claim.issued_token)
            entry = find_service_by_hash(document, sha)
            if entry is not None:
                await db(services.claim_record_found)(
                    asset=asset,
                    claim_id=claim.id,
                    token=claim.issued_token,
                    token_sha256=sha,
                    role=claim.claim_type,
                    role_version=_int_or_none(claim.claim_type_version),
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
            "reconciliation of an asset failed: %s", exc, extra=_log_extra(asset)
        )
        metrics.RECONCILE_RUNS.labels("error").inc()
        result.errors.append(f"{asset.did}: {services.readable_error(exc)}")
        return result
    metrics.RECONCILE_RUNS.labels("done").inc()
    return result


async def reconcile_assets(
    *,
    assets: Sequence[Asset],
    integrations: Integrations,
    actor: Actor,
    concurrency: int,
    progress: Any = None,
) -> ReconcileResult:
    """Reconcile many assets with bounded concurrency; `progress(n)` after each."""
    import asyncio

    total = ReconcileResult()
    await db(services.claims_release_stale_publishing)(actor=actor)
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


async def claim_process_due(
    *, record_id: int, integrations: Integrations, actor: Actor
) -> str:
    """A record whose retry time came (or a staff retry): carry it on."""
    record = await _load(record_id)
    if record.status == ClaimStatus.REQUESTED:
        return str(record.status)
    return await claim_advance(
        record_id=record_id, integrations=integrations, actor=actor
    )
