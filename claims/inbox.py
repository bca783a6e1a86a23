"""The inbox: every received or console-queued message, stored before anything acts.

Record (with the duplicate check and the JetStream redelivery check), lease to a
worker, finish with an outcome, defer after a transient failure, release at shutdown,
requeue failed ones, and enqueue staff work for the listener. What a message says is
parsed once, on arrival, into its row's columns (`claims.message_columns`). The lease
and the batched finish are queries on `InboundMessage.objects` (`claims.querysets`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from assets.models import Asset
from assets.selectors import assets_with_keys
from claims import message_columns
from claims.models import (
    InboundMessage,
    MessageKind,
    MessageOutcome,
)
from claims.querysets import insert_rows
from claims.retry import REASON_GAVE_UP, readable_error, retry_policy
from evops.protocol import messages as wire
from evops.protocol.dids import DID

log = logging.getLogger(__name__)


REASON_DUPLICATE = "duplicate of message #{id}"


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
    a crash before the ack is the same row). In both modes the same message again
    within `DUPLICATE_WINDOW_SECONDS` (by meaning: kind, canonical DID, claim id;
    by bytes when it does not parse) is stored as an ignored duplicate, so a triple
    delivery does one piece of work and an asset has one request in flight. The
    payload is kept up to `INBOUND_PAYLOAD_LIMIT` bytes; its full size is recorded.
    """
    fields, early = message_columns.inbound_fields(
        subject, payload, kind=kind, listener=listener
    )
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
    for key, pk in InboundMessage.objects.first_stored(sorted(set(keys)), window):
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
        message_columns.inbound_fields(subject, payload, kind=kind, listener=listener)
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


def inbound_record_each(
    messages: Sequence[tuple[str, bytes]], *, listener: str = ""
) -> list[InboundMessage] | None:
    """Store messages one by one after their batch was refused (core mode).

    A message the database refuses even alone is stored as a rejected row holding
    only what is safe (its subject escaped, no payload) and the database's reason,
    so one hostile message never holds back the others. Returns None, storing
    nothing, when not one message goes in: the database is down, not the data.
    """
    stored: list[InboundMessage] = []
    refused: list[tuple[str, bytes, BaseException]] = []
    for subject, payload in messages:
        try:
            stored += inbound_record_many([(subject, payload)], listener=listener)
        except Exception as error:
            refused.append((subject, payload, error))
    if not stored and refused:
        try:
            stored.append(_record_refused(*refused.pop(0), listener=listener))
        except Exception:
            return None
    for subject, payload, exc in refused:
        stored.append(_record_refused(subject, payload, exc, listener=listener))
    return stored


def _record_refused(
    subject: str, payload: bytes, error: BaseException, *, listener: str
) -> InboundMessage:
    log.error(
        "database refused a received message: %s",
        wire.printable(str(error))[:200],
        extra={"subject": wire.printable(subject)[:255]},
    )
    return InboundMessage.objects.create(
        subject=wire.printable(subject)[:255],
        payload="",
        payload_size=len(payload),
        truncated=bool(payload),
        dedupe_key=message_columns.dedupe_key(subject, payload),
        listener=listener[:150],
        outcome=MessageOutcome.REJECTED,
        reason=REASON_UNSTORABLE.format(
            error=wire.printable(readable_error(error))[:500]
        ),
        processed_at=timezone.now(),
        next_attempt_at=None,
    )


REASON_UNSTORABLE = "the database refused this message as received: {error}"


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
    created = insert_rows([InboundMessage(**built[index][0]) for index in first])
    for index, row in zip(first, created, strict=True):
        rows[index] = row
        originals.setdefault(row.dedupe_key, row.pk)
    if later:
        for index in later:
            fields = built[index][0]
            fields.update(_duplicate_of(originals[fields["dedupe_key"]]))
        created = insert_rows([InboundMessage(**built[index][0]) for index in later])
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
    """Take up to `limit` due messages (SKIP LOCKED), leasing them to a worker for
    `lease_seconds`, with the assets they name: the inbox's one lease.

    A burst of prequalification requests then costs one asset query per lease
    instead of one per message.
    """
    messages = InboundMessage.objects.lease_due(
        limit=limit, lease_seconds=lease_seconds
    )
    addresses: set[str] = set()
    for message in messages:
        try:
            if message.kind == MessageKind.RECONCILE:
                addresses.add(message_columns.queued_did(message.payload).address)
                continue
            hint = message_columns.message_hint(message)
        except wire.MessageError:
            continue
        addresses.add(hint.did.address)
    assets: dict[str, Asset | None] = dict.fromkeys(addresses)
    for asset in assets_with_keys(addresses):
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
    InboundMessage.objects.finish_many(
        [(outcome, reason, kind, asset_did, claim_id, record_id, message_id)]
    )


def inbound_defer(*, message_id: int, error: BaseException | str) -> str:
    """A transient failure: try again after a backoff, or give up after MAX_ATTEMPTS."""
    text = readable_error(error)
    attempts = (
        InboundMessage.objects.filter(pk=message_id)
        .values_list("attempts", flat=True)
        .first()
    ) or 0
    policy = retry_policy()
    if policy.gives_up(attempts):
        inbound_finish(
            message_id=message_id,
            outcome=MessageOutcome.FAILED,
            reason=REASON_GAVE_UP.format(attempts=attempts, error=text),
        )
        return MessageOutcome.FAILED
    InboundMessage.objects.filter(pk=message_id).update(
        reason=text,
        next_attempt_at=timezone.now() + timedelta(seconds=policy.delay(attempts)),
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


def inbound_requeue_requests(*, asset_dids: Iterable[str] = ()) -> int:
    """Hand failed prequalification requests back to the listener (staff retry).

    A request that gave up (the cache server or the chain down past
    `MAX_ATTEMPTS`) has no claim to retry yet: the message itself is retried.
    """
    query = InboundMessage.objects.filter(
        outcome=MessageOutcome.FAILED, kind=MessageKind.PREQUALIFICATION
    )
    dids = [DID.parse(did).canonical for did in asset_dids]
    if dids:
        query = query.filter(asset_did__in=dids)
    return query.update(
        outcome=MessageOutcome.PENDING,
        attempts=0,
        next_attempt_at=timezone.now(),
        processed_at=None,
    )
