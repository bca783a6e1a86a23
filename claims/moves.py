"""Many compare-and-set moves of claim records in one transaction (the listener's).

A burst of credentials walks every record through the same moves at about the same
moment (issued → stored → publishing → published). One by one, each move is its own
transaction: a SELECT, an UPDATE, an event INSERT and a commit. The listener's
database threads gather the same move of many workers (`claims.dbthreads.Coalesced`,
`claims.batches.BATCHED`) and make them here together: the rows locked in id order,
one UPDATE per set of equal new values, one INSERT for all their events.

The semantics are `claims.transitions.claim_transition`'s, row by row: a move
happens only when the record is in the status it expects, only those that happened
get an event (the history stays complete and append-only) and an announcement after
commit, and each caller learns whether its own move happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from claims.history import announce, event_row
from claims.models import (
    ALLOWED_TRANSITIONS,
    Actor,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    MessageOutcome,
)
from claims.querysets import insert_rows
from evops.protocol import erc1056

ERR_NOT_ALLOWED = "A claim does not move from {current} to {to}."
REASON_SETTLED = "settled: its claim (record #{record}) was published later"


@dataclass(frozen=True)
class Move:
    """One record's move from `expected` to `to`, with the columns it sets."""

    record_id: int
    expected: str
    to: str
    actor: Actor
    kind: str = ""
    message: str = ""
    details: Mapping[str, Any] | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


def publish_lease() -> datetime:
    """Until when a record taken now is leased (`PUBLISH_LEASE_SECONDS`)."""
    return timezone.now() + timedelta(seconds=float(settings.PUBLISH_LEASE_SECONDS))


# The pipeline's hot moves, shared by the single calls (`claims.transitions`) and
# the batched ones below, so both write the same columns, events and messages.


def issued_move(
    *,
    record_id: int,
    token: str,
    token_sha256: str,
    issuer_did: str,
    role: str,
    role_version: int | None,
    actor: Actor,
    details: Mapping[str, Any] | None = None,
    now: datetime,
    lease: datetime,
) -> Move:
    """requested → issued with the verified token (`claim_record_issued`)."""
    return Move(
        record_id,
        ClaimStatus.REQUESTED,
        ClaimStatus.ISSUED,
        actor,
        message=f"Issued by {issuer_did}; token verified.",
        details={**(details or {}), "token_sha256": token_sha256},
        fields={
            "token": token,
            "token_sha256": token_sha256,
            "issuer_did": issuer_did,
            "role": role,
            "role_version": role_version,
            "issued_at": now,
            "next_retry_at": lease,
            "last_error": "",
        },
    )


def stored_move(*, record_id: int, cid: str, actor: Actor, lease: datetime) -> Move:
    """issued → stored, with the CID the credential store returned."""
    return Move(
        record_id,
        ClaimStatus.ISSUED,
        ClaimStatus.STORED,
        actor,
        message=f"Token stored as {cid}.",
        details={"cid": cid},
        fields={"cid": cid, "next_retry_at": lease},
    )


def publishing_move(*, record_id: int, actor: Actor, lease: datetime) -> Move:
    """stored → publishing (`transitions.claim_begin_publishing`)."""
    return Move(
        record_id,
        ClaimStatus.STORED,
        ClaimStatus.PUBLISHING,
        actor,
        fields={"attempts": F("attempts") + 1, "next_retry_at": lease},
    )


def published_move(
    *,
    record_id: int,
    actor: Actor,
    service_id: str,
    tx_hash: str = "",
    block_number: int | None = None,
    message: str = "",
    details: Mapping[str, Any] | None = None,
    now: datetime,
) -> Move:
    """publishing → published (`transitions.claim_mark_published`)."""
    return Move(
        record_id,
        ClaimStatus.PUBLISHING,
        ClaimStatus.PUBLISHED,
        actor,
        message=message,
        details={**(details or {}), "tx_hash": tx_hash, "service_id": service_id},
        fields={
            "service_id": service_id,
            "tx_hash": tx_hash,
            "block_number": block_number,
            "published_at": now,
            "next_retry_at": None,
            "last_error": "",
        },
    )


def claim_record_stored_many(calls: Sequence[Mapping[str, Any]]) -> list[bool]:
    """`transitions.claim_record_stored` for many records (keyword arguments)."""
    lease = publish_lease()
    return claim_transition_many([stored_move(**c, lease=lease) for c in calls])


def claim_begin_publishing_many(calls: Sequence[Mapping[str, Any]]) -> list[bool]:
    """`transitions.claim_begin_publishing` for many records: one UPDATE."""
    lease = publish_lease()
    return claim_transition_many([publishing_move(**c, lease=lease) for c in calls])


def claim_mark_published_many(calls: Sequence[Mapping[str, Any]]) -> list[bool]:
    """`transitions.claim_mark_published` for many records, settling the failed
    messages about those that moved."""
    now = timezone.now()
    wanted = [published_move(**c, now=now) for c in calls]
    moved = claim_transition_many(wanted)
    done = [m.record_id for m, ok in zip(wanted, moved, strict=True) if ok]
    inbound_settle_for_many(done)
    return moved


def claim_record_written_many(calls: Sequence[Mapping[str, Any]]) -> list[None]:
    """`transitions.claim_record_written` for many records: their notes in one
    INSERT, what was written kept on each row, in one transaction."""
    with transaction.atomic():
        insert_rows(
            [
                event_row(
                    c["record_id"],
                    actor=c["actor"],
                    kind="written",
                    message=written_message(c["service_id"], c["result"].tx_hash),
                    details=written_details(c["result"]),
                )
                for c in calls
            ]
        )
        ClaimRecord.objects.update_each(
            [
                (
                    c["record_id"],
                    {
                        "tx_hash": c["result"].tx_hash,
                        "block_number": c["result"].block_number,
                        "service_id": c["service_id"],
                        "attribute_name": erc1056.attribute_name(),
                        "attribute_value": c["attribute_value"],
                    },
                )
                for c in calls
            ]
        )
    return [None] * len(calls)


def written_message(service_id: str, tx_hash: str) -> str:
    return f"Service entry {service_id} written in {tx_hash}."


def written_details(result: Any) -> dict[str, Any]:
    """A `PublishResult` as the `written` note keeps it."""
    return {
        "tx_hash": result.tx_hash,
        "block_number": result.block_number,
        "gas_used": result.gas_used,
        "mode": result.mode,
    }


def claim_transition_many(moves: Sequence[Move]) -> list[bool]:
    """`claim_transition` for many records in one transaction; whether each moved.

    The records are locked in id order (as every batched writer does, so two
    batches cannot deadlock) and read once; a record named twice sees the first
    move's status, as two single calls would.
    """
    if not moves:
        return []
    with transaction.atomic():
        return transition_together(moves)


def transition_together(moves: Sequence[Move]) -> list[bool]:
    """`claim_transition_many`'s work, inside the caller's transaction (which
    `claims.issued` shares with its other writes)."""
    moved = [False] * len(moves)
    status = ClaimRecord.objects.lock_statuses([m.record_id for m in moves])
    groups: dict[Any, list[Move]] = {}
    events = []
    for i, move in enumerate(moves):
        current = status.get(move.record_id)
        if current is None or current != move.expected:
            continue
        if move.to not in ALLOWED_TRANSITIONS[ClaimStatus(current)]:
            raise ValueError(ERR_NOT_ALLOWED.format(current=current, to=move.to))
        status[move.record_id] = move.to
        moved[i] = True
        groups.setdefault(_same_update(move, i), []).append(move)
        events.append(
            event_row(
                move.record_id,
                actor=move.actor,
                kind=move.kind or move.to,
                from_status=current,
                to_status=move.to,
                message=move.message,
                details=move.details,
            )
        )
    now = timezone.now()
    each: dict[Any, list[tuple[int, Mapping[str, Any]]]] = {}
    for group in groups.values():
        first = group[0]
        if len(group) == 1 and not _has_expression(first.fields):
            # Values of its own (a CID, a token): with the others of its kind.
            row = {"status": first.to, "updated_at": now, **first.fields}
            each.setdefault(tuple(row), []).append((first.record_id, row))
            continue
        ClaimRecord.objects.update_together(
            [m.record_id for m in group],
            {"status": first.to, "updated_at": now, **first.fields},
        )
    for rows in each.values():
        ClaimRecord.objects.update_each(rows)
    insert_rows(events)
    for move, done in zip(moves, moved, strict=True):
        if done:
            announce(move.record_id, move.to)
    return moved


def _has_expression(fields: Mapping[str, Any]) -> bool:
    return any(hasattr(value, "resolve_expression") for value in fields.values())


def _same_update(move: Move, index: int) -> Any:
    """Moves with this same key set the same columns to the same values."""
    try:
        key = (move.to, tuple(sorted(move.fields.items())))
        hash(key)
    except TypeError:
        return index
    return key


def inbound_settle_for_many(record_ids: Sequence[int]) -> int:
    """`transitions.inbound_settle_for` for many published records: one query when
    no failed message names them (the usual case)."""
    settled = 0
    for message_id, owner in InboundMessage.objects.failed_naming(record_ids):
        settled += InboundMessage.objects.filter(
            pk=message_id, outcome=MessageOutcome.FAILED
        ).update(
            outcome=MessageOutcome.PROCESSED,
            reason=REASON_SETTLED.format(record=owner),
            processed_at=timezone.now(),
        )
    return settled
