"""The claim state machine: the compare-and-set transition and one function per move.

Every status change goes through `claim_transition`, a compare-and-set
(`filter(pk=..., status__in=expected).update(...)`) that proceeds only when exactly one
row changed and appends a `ClaimEvent` in the same transaction. Whoever wins the CAS
into `publishing` is the only one allowed to write to the chain for that record, which
is what keeps a duplicate message, a racing reconciler and a staff retry from causing
two chain writes. These functions are synchronous (the admin calls them directly);
the async pipeline calls them in a database thread. The moves after a failure, and
the staff retry back from failed, are in `claims.failures`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from assets.models import Asset
from claims import moves
from claims.history import announce, event_append
from claims.models import (
    ALLOWED_TRANSITIONS,
    Actor,
    ClaimRecord,
    ClaimStatus,
)
from claims.querysets import skip_locked
from claims.retry import MAX_ERROR
from evops.integrations.chain import PublishResult
from evops.protocol import erc1056

log = logging.getLogger(__name__)


ERR_NOT_ALLOWED = moves.ERR_NOT_ALLOWED
REQUESTED_MESSAGE = "Claim request filed for {role} v{version}."


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
    current: str | None
    with transaction.atomic():
        if len(expected) == 1 and to in ALLOWED_TRANSITIONS[ClaimStatus(expected[0])]:
            # One status expected: the UPDATE alone is the compare-and-set.
            current = expected[0]
        else:
            current = (
                ClaimRecord.objects.filter(pk=record_id, status__in=expected)
                .values_list("status", flat=True)
                .first()
            )
        if current is None:
            return False
        if to not in ALLOWED_TRANSITIONS[ClaimStatus(current)]:
            raise ValueError(ERR_NOT_ALLOWED.format(current=current, to=to))
        changed = ClaimRecord.objects.filter(pk=record_id, status=current).update(
            status=to, updated_at=timezone.now(), **fields
        )
        if changed != 1:
            return False
        event_append(
            record_id,
            actor=actor,
            kind=kind or to,
            from_status=current,
            to_status=to,
            message=message,
            details=details,
        )
        announce(record_id, to)
    return True


def claim_move(move: moves.Move) -> bool:
    """`claim_transition` of one `claims.moves.Move`."""
    return claim_transition(
        record_id=move.record_id,
        expected=[move.expected],
        to=move.to,
        actor=move.actor,
        kind=move.kind,
        message=move.message,
        details=move.details,
        **move.fields,
    )


_lease = moves.publish_lease


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
            event_append(
                record.pk,
                actor=actor,
                kind="requested",
                to_status=ClaimStatus.REQUESTED,
                message=REQUESTED_MESSAGE.format(role=role, version=role_version),
                details=details,
            )
            announce(record.pk, record.status)
    except IntegrityError:
        # Already recorded (a duplicate message, the reconciler, another listener).
        existing = ClaimRecord.objects.filter(asset=asset, claim_id=claim_id).first()
        if existing is None:
            raise
        return existing, False
    return record, True


def claim_get_or_create(asset: Asset, claim_id: str, actor: Actor) -> ClaimRecord:
    """The record of this claim, created (with a `discovered` event) if unseen."""
    try:
        with transaction.atomic():
            record, created = ClaimRecord.objects.get_or_create(
                asset=asset, claim_id=claim_id
            )
            if created:
                event_append(
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
    record = claim_get_or_create(asset, claim_id, actor)
    moved = claim_move(
        moves.issued_move(
            record_id=record.pk,
            token=token,
            token_sha256=token_sha256,
            issuer_did=issuer_did,
            role=role,
            role_version=role_version,
            actor=actor,
            details=details,
            now=timezone.now(),
            lease=_lease(),
        )
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
    record = claim_get_or_create(asset, claim_id, actor)
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
        last_error=message[:MAX_ERROR],
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
    record = claim_get_or_create(asset, claim_id, actor)
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
    return claim_move(
        moves.stored_move(record_id=record_id, cid=cid, actor=actor, lease=_lease())
    )


def claim_begin_publishing(*, record_id: int, actor: Actor) -> bool:
    """stored → publishing: the lock that allows exactly one chain write.

    The record is leased (`next_retry_at`) for `PUBLISH_LEASE_SECONDS`, renewed by
    the holding listener's heartbeat (`claims.leases`): if that listener dies, the
    lease runs out and another worker resumes the record (`claim_resume_publishing`).
    """
    return claim_move(
        moves.publishing_move(record_id=record_id, actor=actor, lease=_lease())
    )


def claim_record_written(
    *,
    record_id: int,
    actor: Actor,
    service_id: str,
    result: PublishResult,
    attribute_value: bytes,
) -> None:
    """A service entry sent and mined: its note, and what was written kept on the
    row (the removal must carry the same name and value), in one transaction."""
    with transaction.atomic():
        event_append(
            record_id,
            actor=actor,
            kind="written",
            message=moves.written_message(service_id, result.tx_hash),
            details=moves.written_details(result),
        )
        ClaimRecord.objects.filter(pk=record_id).update(
            tx_hash=result.tx_hash,
            block_number=result.block_number,
            service_id=service_id,
            attribute_name=erc1056.attribute_name(),
            attribute_value=attribute_value,
        )


def claim_note_resumed(*, record_id: int, actor: Actor) -> None:
    """History of a `publishing` record taken over after its lease ran out (crash).

    `ClaimRecord.objects.lease_due` took it (the expired lease is the
    compare-and-set); the taker resolves the document from chain before writing,
    so a write the dead holder did land is found, not repeated.
    """
    event_append(record_id, actor=actor, kind="resumed", message=MSG_RESUMED)


MSG_RESUMED = (
    "Publication resumed: the worker holding it stopped renewing its lease; the "
    "DID document is read from chain before any write."
)


def leases_renew(*, message_ids: Iterable[int], record_ids: Iterable[int]) -> None:
    """Push the leases of what a live listener holds (its heartbeat).

    Rows another transaction holds right now (a worker finishing the message, a
    transition of the record) are skipped, not waited for: they are being settled,
    and waiting would order the locks differently from the batched finish, a
    deadlock PostgreSQL then breaks by failing one side.
    """
    from claims.models import InboundMessage, MessageOutcome

    messages, records = list(message_ids), list(record_ids)
    inbox_until = timezone.now() + timedelta(
        seconds=float(settings.INBOX_LEASE_SECONDS)
    )
    # Only leases, never a backoff a worker set that reaches further.
    if messages:
        _renew_unlocked(
            InboundMessage.objects.filter(
                pk__in=messages,
                outcome=MessageOutcome.PENDING,
                next_attempt_at__lt=inbox_until,
            ),
            next_attempt_at=inbox_until,
        )
    publish_until = _lease()
    if records:
        _renew_unlocked(
            ClaimRecord.objects.filter(
                pk__in=records,
                status=ClaimStatus.PUBLISHING,
                next_retry_at__lt=publish_until,
            ),
            next_retry_at=publish_until,
        )


def _renew_unlocked(query: QuerySet[Any], **lease: Any) -> None:
    """Set `lease` on the rows of `query` no other transaction holds, in id order."""
    with transaction.atomic():
        free = list(skip_locked(query.order_by("pk")).values_list("pk", flat=True))
        if free:
            query.model.objects.filter(pk__in=free).update(**lease)


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
    """publishing → published, after the document resolved from chain shows it.

    Messages about this claim that failed earlier (a notice that gave up while the
    chain was down, say) are settled with it: the failure they report is over.
    """
    moved = claim_move(
        moves.published_move(
            record_id=record_id,
            actor=actor,
            service_id=service_id,
            tx_hash=tx_hash,
            block_number=block_number,
            message=message,
            details=details,
            now=timezone.now(),
        )
    )
    if moved:
        inbound_settle_for(record_id=record_id)
    return moved


def inbound_settle_for(*, record_id: int) -> int:
    """Failed messages about a claim that has since been published: settled."""
    return moves.inbound_settle_for_many([record_id])


REASON_SETTLED = moves.REASON_SETTLED


def claims_lease_due(*, limit: int) -> list[int]:
    """Take up to `limit` records due for another try, for the publication lease."""
    return ClaimRecord.objects.lease_due(limit=limit, until=_lease())


def claims_release_stale_publishing(*, actor: Actor) -> list[int]:
    """Hand back records stuck in `publishing` longer than the lease (crashed worker).

    The next attempt resolves the document from chain before writing, so a write
    that did land is found rather than repeated.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=float(settings.PUBLISH_LEASE_SECONDS))
    released = []
    for pk in ClaimRecord.objects.filter(
        Q(next_retry_at__lt=now) | Q(next_retry_at__isnull=True, updated_at__lt=cutoff),
        status=ClaimStatus.PUBLISHING,
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
