"""Writes on claim records and inbound messages: the state machine and the inbox.

Every status change goes through `claim_transition`, a compare-and-set
(`filter(pk=..., status__in=expected).update(...)`) that proceeds only when exactly one
row changed and appends a `ClaimEvent` in the same transaction. Whoever wins the CAS
into `publishing` is the only one allowed to write to the chain for that record, which
is what keeps a duplicate message, a racing reconciler and a staff retry from causing
two chain writes. These functions are synchronous (the admin calls them directly);
the async flows call them through `sync_to_async`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Field
from django.utils import timezone

from assets.models import Asset
from claims import signals
from claims.models import (
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    EventActor,
    InboundMessage,
    MessageKind,
    MessageOutcome,
)
from evops.integrations import nats
from evops.protocol.dids import DID
from evops.protocol.errors import DIDError

log = logging.getLogger(__name__)

ERR_NOT_RETRYABLE = "Only failed claims can be retried (this one is {status})."
REASON_DUPLICATE = "duplicate of message #{id}"
REASON_GAVE_UP = "gave up after {attempts} attempts: {error}"
# A request-credential notice goes to the issuers (protocol.md §5): nothing to do.
REASON_FOR_ISSUERS = "request_for_issuers"

_MAX_ERROR = 2000
_REQUESTED = "Claim request filed for {role} v{version}."


@dataclass(frozen=True)
class Actor:
    """Who caused an event: the listener, the reconciler, or a staff user."""

    kind: str
    label: str = ""
    user_id: int | None = None


LISTENER = Actor(EventActor.LISTENER, "listener")
RECONCILER = Actor(EventActor.RECONCILER, "reconciler")
SYSTEM = Actor(EventActor.SYSTEM, "system")


def staff_actor(user: Any) -> Actor:
    """The actor for a staff action (admin or command run by a named user)."""
    if user is None:
        return Actor(EventActor.STAFF, "staff")
    return Actor(EventActor.STAFF, user.get_username(), user.pk)


def retry_delay(attempts: int) -> float:
    """Jittered exponential backoff: base * 2**(attempts-1), capped, times 0.5-1.5."""
    base = float(settings.RETRY_BASE_SECONDS)
    cap = float(settings.RETRY_MAX_SECONDS)
    delay = min(cap, base * (2 ** max(0, attempts - 1)))
    return float(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not crypto


def readable_error(error: BaseException | str) -> str:
    """One readable line for `last_error`: type and message, bounded in length."""
    if isinstance(error, BaseException):
        name = type(error).__name__
        text = f"{name}: {error}" if str(error) else name
    else:
        text = error
    return text[:_MAX_ERROR]


# --- claim records -------------------------------------------------------------------


def _event(record_id: int, **fields: Any) -> ClaimEvent:
    """Append one history event now (`_event_row`'s arguments)."""
    event = _event_row(record_id, **fields)
    event.save(force_insert=True)
    return event


def _event_row(
    record_id: int,
    *,
    actor: Actor,
    kind: str,
    from_status: str = "",
    to_status: str = "",
    message: str = "",
    details: Mapping[str, Any] | None = None,
) -> ClaimEvent:
    """An unsaved history event (`_event` saves one; batches bulk-create them)."""
    return ClaimEvent(
        record_id=record_id,
        kind=kind,
        from_status=from_status,
        to_status=to_status,
        actor=actor.kind,
        actor_label=actor.label,
        user_id=actor.user_id,
        message=message[:_MAX_ERROR],
        details=dict(details or {}),
    )


def _announce(record_id: int, status: str) -> None:
    transaction.on_commit(
        lambda: signals.claim_changed.send(
            sender=ClaimRecord, record_id=record_id, status=status
        )
    )


def claim_transition(
    *,
    record_id: int,
    expected: Iterable[str],
    to: str,
    actor: Actor,
    kind: str = "",
    message: str = "",
    details: Mapping[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move a record from one of `expected` to `to`, if (and only if) it is there.

    Returns False when another worker, the reconciler or a staff user moved it first;
    the caller then does nothing further. The event is written in the same
    transaction as the change, and the live update goes out after commit.
    """
    expected = list(expected)
    with transaction.atomic():
        current = (
            ClaimRecord.objects.filter(pk=record_id, status__in=expected)
            .values_list("status", flat=True)
            .first()
        )
        if current is None:
            return False
        changed = ClaimRecord.objects.filter(pk=record_id, status=current).update(
            status=to, updated_at=timezone.now(), **fields
        )
        if changed != 1:
            return False
        _event(
            record_id,
            actor=actor,
            kind=kind or to,
            from_status=current,
            to_status=to,
            message=message,
            details=details,
        )
        _announce(record_id, to)
    return True


def claim_note(
    record_id: int,
    *,
    actor: Actor,
    kind: str,
    message: str = "",
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append a history event that does not change the status."""
    _event(record_id, actor=actor, kind=kind, message=message, details=details)


def _lease() -> datetime:
    return timezone.now() + timedelta(seconds=float(settings.PUBLISH_LEASE_SECONDS))


def claim_record_requested(
    *,
    asset: Asset,
    claim_id: str,
    role: str,
    role_version: int | None,
    actor: Actor,
    details: Mapping[str, Any] | None = None,
) -> tuple[ClaimRecord, bool]:
    """Record a filed claim request; an existing record for the id is left alone.

    Insert first (the usual case: a new claim id), and only on the unique
    constraint's refusal read the existing row: four round trips instead of
    get_or_create's seven (SELECT, SAVEPOINT, INSERT, RELEASE inside the
    transaction).
    """
    try:
        with transaction.atomic():
            record = ClaimRecord.objects.create(
                asset=asset,
                claim_id=claim_id,
                role=role,
                role_version=role_version,
                status=ClaimStatus.REQUESTED,
            )
            _event(
                record.pk,
                actor=actor,
                kind="requested",
                to_status=ClaimStatus.REQUESTED,
                message=_REQUESTED.format(role=role, version=role_version),
                details=details,
            )
            _announce(record.pk, record.status)
    except IntegrityError:
        # Already recorded (a duplicate message, the reconciler, another listener).
        existing = ClaimRecord.objects.filter(asset=asset, claim_id=claim_id).first()
        if existing is None:
            raise
        return existing, False
    return record, True


@dataclass(frozen=True)
class RequestedClaim:
    """One filed claim request to record (`claim_record_requested_many`)."""

    asset: Asset
    claim_id: str
    role: str
    role_version: int | None
    actor: Actor
    details: Mapping[str, Any] | None = None


def claim_record_requested_many(
    requests: Sequence[RequestedClaim],
) -> list[tuple[ClaimRecord, bool]]:
    """`claim_record_requested` for many filed requests, in one transaction.

    The listener's workers file a burst of requests at once; their records are
    written together: one query for those already recorded, one insert for the
    records, one for their events. When another writer records one of the same
    claims in between, the unique constraint refuses the whole insert and each
    request is recorded on its own instead. Results are in the order given; a
    claim named twice is created by the first and found by the second.
    """
    if not requests:
        return []
    try:
        with transaction.atomic():
            return _record_requested_together(requests)
    except IntegrityError:
        return [
            claim_record_requested(
                asset=r.asset,
                claim_id=r.claim_id,
                role=r.role,
                role_version=r.role_version,
                actor=r.actor,
                details=r.details,
            )
            for r in requests
        ]


def _record_requested_together(
    requests: Sequence[RequestedClaim],
) -> list[tuple[ClaimRecord, bool]]:
    existing = _recorded_claims(requests)
    new: dict[tuple[int, str], tuple[ClaimRecord, RequestedClaim]] = {}
    for r in requests:
        key = (r.asset.pk, r.claim_id)
        if key not in existing and key not in new:
            record = ClaimRecord(
                asset=r.asset,
                claim_id=r.claim_id,
                role=r.role,
                role_version=r.role_version,
                status=ClaimStatus.REQUESTED,
            )
            new[key] = (record, r)
    ClaimRecord.objects.bulk_create([record for record, _ in new.values()])
    ClaimEvent.objects.bulk_create(
        [
            _event_row(
                record.pk,
                actor=r.actor,
                kind="requested",
                to_status=ClaimStatus.REQUESTED,
                message=_REQUESTED.format(role=r.role, version=r.role_version),
                details=r.details,
            )
            for record, r in new.values()
        ]
    )
    for record, _ in new.values():
        _announce(record.pk, record.status)
    results: list[tuple[ClaimRecord, bool]] = []
    for r in requests:
        key = (r.asset.pk, r.claim_id)
        if key in existing:
            results.append((existing[key], False))
        else:
            results.append((new[key][0], True))
            existing[key] = new[key][0]
    return results


def _recorded_claims(
    requests: Sequence[RequestedClaim],
) -> dict[tuple[int, str], ClaimRecord]:
    """The records that already exist for these requests, by (asset id, claim id)."""
    return {
        (record.asset_id, record.claim_id): record
        for record in ClaimRecord.objects.filter(
            claim_id__in={r.claim_id for r in requests},
            asset_id__in={r.asset.pk for r in requests},
        )
    }


def _get_or_create(asset: Asset, claim_id: str, actor: Actor) -> ClaimRecord:
    try:
        with transaction.atomic():
            record, created = ClaimRecord.objects.get_or_create(
                asset=asset, claim_id=claim_id
            )
            if created:
                _event(
                    record.pk,
                    actor=actor,
                    kind="discovered",
                    to_status=record.status,
                    message="First seen in an issue or rejection notice.",
                )
    except IntegrityError:
        # A concurrent worker created it between our SELECT and INSERT.
        record = ClaimRecord.objects.get(asset=asset, claim_id=claim_id)
    return record


def claim_record_issued(
    *,
    asset: Asset,
    claim_id: str,
    token: str,
    token_sha256: str,
    issuer_did: str,
    role: str,
    role_version: int | None,
    actor: Actor,
    details: Mapping[str, Any] | None = None,
) -> tuple[ClaimRecord, bool]:
    """Record a verified issued credential: requested → issued.

    Returns the record and whether this call moved it. A record already issued (or
    further along) is returned unchanged, so a duplicate notice is a no-op.
    """
    record = _get_or_create(asset, claim_id, actor)
    moved = claim_transition(
        record_id=record.pk,
        expected=[ClaimStatus.REQUESTED],
        to=ClaimStatus.ISSUED,
        actor=actor,
        message=f"Issued by {issuer_did}; token verified.",
        details={**(details or {}), "token_sha256": token_sha256},
        token=token,
        token_sha256=token_sha256,
        issuer_did=issuer_did,
        role=role,
        role_version=role_version,
        issued_at=timezone.now(),
        next_retry_at=_lease(),
        last_error="",
    )
    record.refresh_from_db()
    return record, moved


def claim_record_rejected(
    *,
    asset: Asset,
    claim_id: str,
    reason: str,
    message: str,
    actor: Actor,
    details: Mapping[str, Any] | None = None,
    **fields: Any,
) -> tuple[ClaimRecord, bool]:
    """Mark a claim rejected (by its issuer, or because its token failed the checks).

    Never from `publishing` or `published`: a credential already on its way to the
    chain or on it is not undone by a late notice.
    """
    record = _get_or_create(asset, claim_id, actor)
    moved = claim_transition(
        record_id=record.pk,
        expected=[
            ClaimStatus.REQUESTED,
            ClaimStatus.ISSUED,
            ClaimStatus.STORED,
            ClaimStatus.FAILED,
        ],
        to=ClaimStatus.REJECTED,
        actor=actor,
        message=message,
        details={**(details or {}), "reason": reason},
        rejection_reason=reason[:100],
        last_error=message[:_MAX_ERROR],
        next_retry_at=None,
        **fields,
    )
    record.refresh_from_db()
    return record, moved


def claim_record_found(
    *,
    asset: Asset,
    claim_id: str,
    token: str,
    token_sha256: str,
    role: str,
    role_version: int | None,
    service_id: str,
    actor: Actor,
) -> bool:
    """The reconciler found the credential in the DID document: mark it published.

    Not from `publishing` (a worker holds it and will find the entry itself) and
    not from `rejected` (a refused credential stays refused, whatever is on chain).
    """
    record = _get_or_create(asset, claim_id, actor)
    if record.status == ClaimStatus.PUBLISHED:
        return False
    return claim_transition(
        record_id=record.pk,
        expected=[
            ClaimStatus.REQUESTED,
            ClaimStatus.ISSUED,
            ClaimStatus.STORED,
            ClaimStatus.FAILED,
        ],
        to=ClaimStatus.PUBLISHED,
        actor=actor,
        kind="found_published",
        message="Found in the DID document resolved from chain; nothing written.",
        details={"service_id": service_id, "token_sha256": token_sha256},
        token=record.token or token,
        token_sha256=token_sha256,
        role=record.role or role,
        role_version=record.role_version or role_version,
        service_id=service_id,
        published_at=timezone.now(),
        next_retry_at=None,
        last_error="",
    )


def claim_record_stored(*, record_id: int, cid: str, actor: Actor) -> bool:
    """issued → stored, with the CID the credential store returned."""
    return claim_transition(
        record_id=record_id,
        expected=[ClaimStatus.ISSUED],
        to=ClaimStatus.STORED,
        actor=actor,
        message=f"Token stored as {cid}.",
        details={"cid": cid},
        cid=cid,
        next_retry_at=_lease(),
    )


def claim_begin_publishing(*, record_id: int, actor: Actor) -> bool:
    """stored → publishing: the lock that allows exactly one chain write."""
    return claim_transition(
        record_id=record_id,
        expected=[ClaimStatus.STORED],
        to=ClaimStatus.PUBLISHING,
        actor=actor,
        attempts=F("attempts") + 1,
        next_retry_at=None,
    )


def claim_mark_published(
    *,
    record_id: int,
    actor: Actor,
    service_id: str,
    tx_hash: str = "",
    block_number: int | None = None,
    message: str = "",
    details: Mapping[str, Any] | None = None,
) -> bool:
    """publishing → published, after the document resolved from chain shows it."""
    return claim_transition(
        record_id=record_id,
        expected=[ClaimStatus.PUBLISHING],
        to=ClaimStatus.PUBLISHED,
        actor=actor,
        message=message,
        details={**(details or {}), "tx_hash": tx_hash, "service_id": service_id},
        service_id=service_id,
        tx_hash=tx_hash,
        block_number=block_number,
        published_at=timezone.now(),
        next_retry_at=None,
        last_error="",
    )


def claim_schedule_retry(
    *,
    record_id: int,
    expected: str,
    back_to: str,
    error: BaseException | str,
    actor: Actor,
    details: Mapping[str, Any] | None = None,
) -> str:
    """After a transient failure: back to `back_to` with a backoff, or failed.

    Returns the status the record ended in ("" if someone else moved it first).
    `attempts` counts publication attempts (incremented entering `publishing`), or
    is incremented here for failures before that point.
    """
    text = readable_error(error)
    row = (
        ClaimRecord.objects.filter(pk=record_id)
        .values_list("attempts", flat=True)
        .first()
    )
    if row is None:
        return ""
    attempts = row if expected == ClaimStatus.PUBLISHING else row + 1
    if attempts >= settings.MAX_ATTEMPTS:
        moved = claim_transition(
            record_id=record_id,
            expected=[expected],
            to=ClaimStatus.FAILED,
            actor=actor,
            kind="failed",
            message=REASON_GAVE_UP.format(attempts=attempts, error=text),
            details=details,
            attempts=attempts,
            last_error=REASON_GAVE_UP.format(attempts=attempts, error=text),
            next_retry_at=None,
        )
        return ClaimStatus.FAILED if moved else ""
    delay = retry_delay(attempts)
    moved = claim_transition(
        record_id=record_id,
        expected=[expected],
        to=back_to,
        actor=actor,
        kind="retry_scheduled",
        message=f"{text} (attempt {attempts}; retry in {delay:.1f}s)",
        details=details,
        attempts=attempts,
        last_error=text,
        next_retry_at=timezone.now() + timedelta(seconds=delay),
    )
    return back_to if moved else ""


def claim_fail(
    *,
    record_id: int,
    expected: Iterable[str],
    error: BaseException | str,
    actor: Actor,
    details: Mapping[str, Any] | None = None,
) -> bool:
    """A permanent failure: → failed with the readable reason."""
    text = readable_error(error)
    return claim_transition(
        record_id=record_id,
        expected=expected,
        to=ClaimStatus.FAILED,
        actor=actor,
        message=text,
        details=details,
        last_error=text,
        next_retry_at=None,
    )


def claim_retry(*, record: ClaimRecord, actor: Actor) -> bool:
    """Staff retry of a failed claim: back to the step it failed at, due now.

    A record with a CID goes back to `stored`, one with a token to `issued`,
    otherwise to `requested`. The listener's worker (or the `retry_claims` command)
    picks it up; the publication still goes through the CAS into `publishing` and
    the check against the chain, so a retry never writes twice.
    """
    if record.status != ClaimStatus.FAILED:
        raise ValueError(ERR_NOT_RETRYABLE.format(status=record.status))
    if record.cid:
        target = ClaimStatus.STORED
    elif record.token:
        target = ClaimStatus.ISSUED
    else:
        target = ClaimStatus.REQUESTED
    return claim_transition(
        record_id=record.pk,
        expected=[ClaimStatus.FAILED],
        to=target,
        actor=actor,
        kind="retry",
        message=f"Retry requested by {actor.label or actor.kind}.",
        details={"previous_error": record.last_error},
        attempts=0,
        next_retry_at=timezone.now(),
    )


def claims_lease_due(*, limit: int) -> list[int]:
    """Take up to `limit` records due for another try (issued/stored, retry time past).

    Rows are locked with SKIP LOCKED (PostgreSQL) while their retry time is pushed
    forward by the publication lease, so two workers never take the same record and
    a crashed worker's records come back when the lease runs out.
    """
    now = timezone.now()
    with transaction.atomic():
        query = ClaimRecord.objects.filter(
            status__in=[ClaimStatus.ISSUED, ClaimStatus.STORED],
            next_retry_at__lte=now,
        ).order_by("next_retry_at")
        ids = list(_locked(query).values_list("pk", flat=True)[:limit])
        if ids:
            ClaimRecord.objects.filter(pk__in=ids).update(next_retry_at=_lease())
    return ids


def claims_release_stale_publishing(*, actor: Actor) -> list[int]:
    """Hand back records stuck in `publishing` longer than the lease (crashed worker).

    The next attempt resolves the document from chain before writing, so a write
    that did land is found rather than repeated.
    """
    cutoff = timezone.now() - timedelta(seconds=float(settings.PUBLISH_LEASE_SECONDS))
    released = []
    for pk in ClaimRecord.objects.filter(
        status=ClaimStatus.PUBLISHING, updated_at__lt=cutoff
    ).values_list("pk", flat=True):
        if claim_transition(
            record_id=pk,
            expected=[ClaimStatus.PUBLISHING],
            to=ClaimStatus.STORED,
            actor=actor,
            kind="lease_expired",
            message="Publication did not finish within the lease; handed back.",
            next_retry_at=timezone.now(),
        ):
            released.append(pk)
    return released


def _locked(query: Any) -> Any:
    # SQLite has no row locks; there a single listener is the supported setup.
    if connection.features.has_select_for_update_skip_locked:
        return query.select_for_update(skip_locked=True)
    return query


# --- inbound messages ----------------------------------------------------------------


def dedupe_key(subject: str, payload: bytes) -> str:
    return hashlib.sha256(subject.encode("utf-8") + b"\n" + payload).hexdigest()


def inbound_record(
    *,
    subject: str,
    payload: bytes,
    kind: str = MessageKind.UNKNOWN,
    stream: str = "",
    stream_sequence: int | None = None,
    listener: str = "",
) -> InboundMessage:
    """Store a received message before anything acts on it.

    In JetStream mode the stream sequence identifies the message (a redelivery after
    a crash before the ack is the same row). In both modes the same subject and
    payload again within `DUPLICATE_WINDOW_SECONDS` is stored as an ignored
    duplicate, so a triple delivery does one piece of work. The payload is kept up to
    `INBOUND_PAYLOAD_LIMIT` bytes; its full size is recorded.
    """
    fields, early = _inbound_fields(subject, payload, kind=kind, listener=listener)
    key = fields["dedupe_key"]
    stream_key = f"{stream}:{stream_sequence}" if stream_sequence is not None else ""
    try:
        with transaction.atomic():
            # Lock-free check: a duplicate slipping past it is still harmless,
            # because the claim state machine makes every step idempotent.
            original = _originals([key]).get(key)
            if original is not None and not early:
                fields.update(_duplicate_of(original))
            return InboundMessage.objects.create(
                stream_key=stream_key,
                stream_sequence=stream_sequence,
                **fields,
            )
    except IntegrityError:
        if not stream_key:
            raise
        # JetStream redelivered a message we stored before the ack was lost.
        return InboundMessage.objects.get(stream_key=stream_key)


def _inbound_fields(
    subject: str, payload: bytes, *, kind: str, listener: str
) -> tuple[dict[str, Any], str]:
    """The row of a received message, and why it is refused unread ("" if not)."""
    limit = int(settings.INBOUND_PAYLOAD_LIMIT)
    text = payload[:limit].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    fields: dict[str, Any] = {
        "subject": subject[:255],
        "payload": text,
        "payload_size": len(payload),
        "truncated": len(payload) > limit,
        "kind": kind,
        "listener": listener[:150],
        "next_attempt_at": timezone.now(),
        "dedupe_key": dedupe_key(subject, payload),
    }
    # What cannot be kept faithfully (too large, not UTF-8 text) is refused here:
    # the worker only ever parses the stored text.
    early = _unstorable(payload, limit)
    if early:
        fields.update(
            outcome=MessageOutcome.REJECTED,
            reason=early,
            processed_at=timezone.now(),
            next_attempt_at=None,
        )
    elif subject.startswith(_REQUEST_NOTICE_PREFIX):
        fields.update(_request_notice(subject, payload))
    return fields, early


_REQUEST_NOTICE_PREFIX = f"{nats.REQUEST_CREDENTIAL}.claim-exchange."


def _request_notice(subject: str, payload: bytes) -> dict[str, Any]:
    """A well-formed request-credential notice, stored as ignored on arrival.

    It is addressed to the issuers (the cache server sends one with every claim
    request, ours included), so no worker needs to look at it. One that does not
    parse is left pending: the worker rejects it with the parser's reason.
    """
    try:
        hint = nats.parse_message(subject, payload, limit=len(payload))
    except nats.MessageError:
        return {}
    if hint.type is not nats.MessageType.REQUEST or hint.legacy:
        return {}
    return {
        "kind": MessageKind.REQUEST,
        "outcome": MessageOutcome.IGNORED,
        "reason": REASON_FOR_ISSUERS,
        "asset_did": hint.did.canonical[:100],
        "claim_id": hint.claim_id[:100],
        "processed_at": timezone.now(),
        "next_attempt_at": None,
    }


def _duplicate_of(original: int) -> dict[str, Any]:
    return {
        "outcome": MessageOutcome.IGNORED,
        "reason": REASON_DUPLICATE.format(id=original),
        "processed_at": timezone.now(),
        "next_attempt_at": None,
    }


def _originals(keys: Iterable[str]) -> dict[str, int]:
    """The first stored message (not itself a duplicate) of each key in the window."""
    window_seconds = float(settings.DUPLICATE_WINDOW_SECONDS)
    window = timezone.now() - timedelta(seconds=window_seconds)
    found: dict[str, int] = {}
    rows = (
        InboundMessage.objects.filter(dedupe_key__in=set(keys), received_at__gte=window)
        .exclude(outcome=MessageOutcome.IGNORED, reason__startswith="duplicate")
        .order_by("id")
        .values_list("dedupe_key", "pk")
    )
    for key, pk in rows:
        found.setdefault(key, pk)
    return found


def inbound_record_many(
    messages: Sequence[tuple[str, bytes]],
    *,
    kind: str = MessageKind.UNKNOWN,
    listener: str = "",
    requested_by: Any = None,
    stream: str = "",
    sequences: Sequence[int] | None = None,
) -> list[InboundMessage]:
    """Store a batch of received messages as `inbound_record` does one.

    One duplicate check and two inserts for the whole batch instead of a
    transaction per message: the listener's intake of a burst. A message is a
    duplicate of the first stored one with the same subject and payload in the
    window, stored before or earlier in this batch. Returned in the given order.

    JetStream batches pass their stream `sequences`: a message already stored under
    its stream sequence (redelivered because its ack was lost) is that row again.
    If another listener stores one of them meanwhile, the batch is stored one
    message at a time instead.
    """
    if not messages:
        return []
    built = [
        _inbound_fields(subject, payload, kind=kind, listener=listener)
        for subject, payload in messages
    ]
    if requested_by is not None:
        for fields, _ in built:
            fields["requested_by"] = requested_by
            fields["requested_by_label"] = requested_by.get_username()[:150]
    if sequences is not None:
        for (fields, _), sequence in zip(built, sequences, strict=True):
            fields["stream_sequence"] = sequence
            fields["stream_key"] = f"{stream}:{sequence}"
    try:
        with transaction.atomic():
            return _store_batch(built)
    except IntegrityError:
        if sequences is None:
            raise
        return [
            inbound_record(
                subject=subject,
                payload=payload,
                kind=kind,
                stream=stream,
                stream_sequence=sequence,
                listener=listener,
            )
            for (subject, payload), sequence in zip(messages, sequences, strict=True)
        ]


def _stored_by_stream_key(keys: Sequence[str]) -> dict[str, InboundMessage]:
    """Messages already stored under these JetStream `<stream>:<sequence>` keys."""
    return {
        row.stream_key: row
        for row in InboundMessage.objects.filter(stream_key__in=keys)
    }


def _store_batch(built: list[tuple[dict[str, Any], str]]) -> list[InboundMessage]:
    rows: dict[int, InboundMessage] = {}
    stream_keys = [
        fields["stream_key"] for fields, _ in built if fields.get("stream_key")
    ]
    if stream_keys:
        stored = _stored_by_stream_key(stream_keys)
        for index, (fields, _) in enumerate(built):
            if fields.get("stream_key") in stored:
                rows[index] = stored[fields["stream_key"]]
    originals = _originals(fields["dedupe_key"] for fields, _ in built)
    first: list[int] = []  # batch positions stored as originals (or refused)
    later: list[int] = []  # duplicates of a message earlier in this batch
    seen_here: set[str] = set()
    for index, (fields, early) in enumerate(built):
        if index in rows:
            continue
        key = fields["dedupe_key"]
        if early:
            first.append(index)
        elif key in originals:
            fields.update(_duplicate_of(originals[key]))
            first.append(index)
        elif key in seen_here:
            later.append(index)
        else:
            first.append(index)
        seen_here.add(key)
    created = InboundMessage.objects.bulk_create(
        [InboundMessage(**built[index][0]) for index in first]
    )
    for index, row in zip(first, created, strict=True):
        rows[index] = row
        originals.setdefault(row.dedupe_key, row.pk)
    if later:
        for index in later:
            fields = built[index][0]
            fields.update(_duplicate_of(originals[fields["dedupe_key"]]))
        created = InboundMessage.objects.bulk_create(
            [InboundMessage(**built[index][0]) for index in later]
        )
        rows.update(zip(later, created, strict=True))
    return [rows[index] for index in range(len(built))]


# Staff work on many assets, queued in the console for the listener (one inbox row per
# asset; the listener's workers do it, naming the user in the claim history).
CONSOLE_LISTENER = "console"
CONSOLE_SUBJECTS = {
    MessageKind.PREQUALIFICATION: "console.prequalification.exchange",
    MessageKind.RECONCILE: "console.reconcile",
}


def inbound_enqueue(
    *, kind: str, dids: Iterable[str], user: Any
) -> list[InboundMessage]:
    """Queue `kind` (prequalification or reconcile) for each asset DID, as `user`.

    Stored like a received message (`{"did"}` payload): the same request for the
    same asset again within `DUPLICATE_WINDOW_SECONDS` is an ignored duplicate, so
    a second click queues nothing twice.
    """
    subject = CONSOLE_SUBJECTS[MessageKind(kind)]
    messages = [(subject, json.dumps({"did": did}).encode()) for did in dids]
    return inbound_record_many(
        messages, kind=kind, listener=CONSOLE_LISTENER, requested_by=user
    )


def queued_did(payload: str) -> DID:
    """The asset DID of a queued reconciliation, or `nats.MessageError` saying why."""
    data = nats.decode_payload(payload.encode("utf-8"), limit=1 << 30)
    value = data.get("did")
    if not isinstance(value, str):
        raise nats.MessageError(nats.REASON_BAD_FIELD, "did must be a string")
    try:
        return DID.parse(value)
    except DIDError as exc:
        raise nats.MessageError(nats.REASON_INVALID_DID, str(exc)) from None


def _unstorable(payload: bytes, limit: int) -> str:
    if len(payload) > limit:
        return f"{nats.REASON_TOO_LARGE}: {len(payload)} bytes > {limit}"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return nats.REASON_NOT_UTF8
    if "\x00" in text:
        return nats.REASON_NOT_UTF8
    return ""


def inbound_lease_due(*, limit: int, lease_seconds: float) -> list[int]:
    """Take up to `limit` pending messages (SKIP LOCKED), leasing them to a worker."""
    return [
        message.pk
        for message in inbound_lease_due_messages(
            limit=limit, lease_seconds=lease_seconds
        )
    ]


def inbound_lease_due_messages(
    *, limit: int, lease_seconds: float
) -> list[InboundMessage]:
    """`inbound_lease_due`, returning the leased rows (id, subject, payload).

    The worker has what it parses without reading each row again.
    """
    now = timezone.now()
    with transaction.atomic():
        query = InboundMessage.objects.filter(
            outcome=MessageOutcome.PENDING, next_attempt_at__lte=now
        ).order_by("id")
        messages = list(
            _locked(query).only(
                "pk",
                "subject",
                "payload",
                "kind",
                "requested_by",
                "requested_by_label",
            )[:limit]
        )
        if messages:
            InboundMessage.objects.filter(pk__in=[m.pk for m in messages]).update(
                next_attempt_at=now + timedelta(seconds=lease_seconds),
                attempts=F("attempts") + 1,
            )
    return messages


@dataclass(frozen=True)
class LeasedMessages:
    """Messages leased to a worker, with the assets they name (one database call).

    `assets` maps the EIP-55 address of every DID the messages name to its asset
    (sealed key loaded) or None when evops holds no such asset; a message that does
    not parse names nothing here, and the worker rejects it.
    """

    messages: list[InboundMessage]
    assets: dict[str, Asset | None]


def inbound_lease_due_with_assets(
    *, limit: int, lease_seconds: float
) -> LeasedMessages:
    """`inbound_lease_due_messages`, and the assets those messages name.

    A burst of prequalification requests then costs one asset query per lease
    instead of one per message.
    """
    messages = inbound_lease_due_messages(limit=limit, lease_seconds=lease_seconds)
    addresses: set[str] = set()
    for message in messages:
        payload = message.payload.encode("utf-8")
        try:
            if message.kind == MessageKind.RECONCILE:
                addresses.add(queued_did(message.payload).address)
                continue
            hint = nats.parse_message(message.subject, payload, limit=len(payload))
        except nats.MessageError:
            continue
        addresses.add(hint.did.address)
    assets: dict[str, Asset | None] = dict.fromkeys(addresses)
    if addresses:
        for asset in Asset.objects.select_related("key").filter(address__in=addresses):
            assets[asset.address] = asset
    return LeasedMessages(messages, assets)


def inbound_finish(
    *,
    message_id: int,
    outcome: str,
    reason: str = "",
    kind: str | None = None,
    asset_did: str = "",
    claim_id: str = "",
    record_id: int | None = None,
) -> None:
    """Record the outcome of a message: processed, ignored, rejected or failed.

    `kind`, `asset_did`, `claim_id` and `record_id` are written when given and
    otherwise keep what the row has.
    """
    inbound_finish_many(
        [
            Finish(
                message_id=message_id,
                outcome=outcome,
                reason=reason,
                kind=kind,
                asset_did=asset_did,
                claim_id=claim_id,
                record_id=record_id,
            )
        ]
    )


@dataclass(frozen=True)
class Finish:
    """One message's outcome to record (`inbound_finish_many`)."""

    message_id: int
    outcome: str
    reason: str = ""
    kind: str | None = None
    asset_did: str = ""
    claim_id: str = ""
    record_id: int | None = None


def inbound_finish_many(finishes: Sequence[Finish]) -> list[None]:
    """`inbound_finish` for many messages: one statement, run for each, one commit.

    The listener's workers finish a burst of messages at once. One UPDATE per row
    still, but prepared once and sent together (psycopg pipelines `executemany`)
    rather than an ORM query built per message.
    """
    if not finishes:
        return []
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    rows = [
        (
            f.outcome,
            f.reason[:_MAX_ERROR],
            now,
            f.kind or None,
            f.asset_did[:100],
            f.claim_id[:100],
            f.record_id,
            f.message_id,
        )
        for f in finishes
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(_finish_sql(), rows)
    return [None] * len(finishes)


@functools.cache
def _finish_sql() -> str:
    meta = InboundMessage._meta
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        field = meta.get_field(name)
        assert isinstance(field, Field)
        return quote(field.column)

    outcome, reason, processed_at, next_attempt_at, kind = (
        column(name)
        for name in ("outcome", "reason", "processed_at", "next_attempt_at", "kind")
    )
    asset_did, claim_id, record_id, pk = (
        column(name) for name in ("asset_did", "claim_id", "record", "id")
    )
    # Only quoted identifiers from the model's own metadata are formatted in; every
    # value is a parameter.
    return (
        f"UPDATE {quote(meta.db_table)} SET {outcome} = %s, {reason} = %s, "  # noqa: S608
        f"{processed_at} = %s, {next_attempt_at} = NULL, "
        f"{kind} = COALESCE(%s, {kind}), "
        f"{asset_did} = COALESCE(NULLIF(%s, ''), {asset_did}), "
        f"{claim_id} = COALESCE(NULLIF(%s, ''), {claim_id}), "
        f"{record_id} = COALESCE(%s, {record_id}) "
        f"WHERE {pk} = %s"
    )


def inbound_defer(*, message_id: int, error: BaseException | str) -> str:
    """A transient failure: try again after a backoff, or give up after MAX_ATTEMPTS."""
    text = readable_error(error)
    attempts = (
        InboundMessage.objects.filter(pk=message_id)
        .values_list("attempts", flat=True)
        .first()
    ) or 0
    if attempts >= settings.MAX_ATTEMPTS:
        inbound_finish(
            message_id=message_id,
            outcome=MessageOutcome.FAILED,
            reason=REASON_GAVE_UP.format(attempts=attempts, error=text),
        )
        return MessageOutcome.FAILED
    InboundMessage.objects.filter(pk=message_id).update(
        reason=text,
        next_attempt_at=timezone.now() + timedelta(seconds=retry_delay(attempts)),
    )
    return MessageOutcome.PENDING


def inbound_release(*, message_ids: Iterable[int]) -> None:
    """Hand leased messages back (shutdown): due now, attempt not counted."""
    InboundMessage.objects.filter(
        pk__in=list(message_ids), outcome=MessageOutcome.PENDING
    ).update(next_attempt_at=timezone.now(), attempts=F("attempts") - 1)


def inbound_requeue(*, message_ids: Iterable[int] | None = None) -> int:
    """Make failed messages pending again (staff)."""
    query = InboundMessage.objects.filter(outcome=MessageOutcome.FAILED)
    if message_ids is not None:
        query = query.filter(pk__in=list(message_ids))
    return query.update(
        outcome=MessageOutcome.PENDING,
        attempts=0,
        next_attempt_at=timezone.now(),
        processed_at=None,
    )
