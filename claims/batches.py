"""The writes the listener shares between the workers writing at the same moment.

Every message of a burst makes two writes: its claim record (a filed request) and
its outcome; every credential also moves its record through the pipeline
(`claims.moves`). The listener gathers the same write of many workers into one call
(`claims.dbthreads.Coalesced`), so a burst costs a few transactions instead of one
per message. The pipeline and the consumer do not know: they call the single-row
functions (`transitions.claim_record_requested`, `inbox.inbound_finish`) through
`claims.dbthreads.db`, and `BATCHED` tells the listener's database threads which
many-row function stands in for each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from assets.models import Asset
from claims import inbox, issued, moves, transitions
from claims.history import announce, event_row
from claims.models import Actor, ClaimRecord, ClaimStatus, InboundMessage
from claims.querysets import insert_rows
from claims.transitions import REQUESTED_MESSAGE


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
            transitions.claim_record_requested(
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
    insert_rows([record for record, _ in new.values()])
    insert_rows(
        [
            event_row(
                record.pk,
                actor=r.actor,
                kind="requested",
                to_status=ClaimStatus.REQUESTED,
                message=REQUESTED_MESSAGE.format(role=r.role, version=r.role_version),
                details=r.details,
            )
            for record, r in new.values()
        ]
    )
    for record, _ in new.values():
        announce(record.pk, record.status)
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
    ids = ClaimRecord.objects.ids_named(
        sorted({r.claim_id for r in requests}), sorted({r.asset.pk for r in requests})
    )
    if not ids:  # a burst of new requests: no record to load
        return {}
    return {
        (record.asset_id, record.claim_id): record
        for record in ClaimRecord.objects.loaded(ids)
    }


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
    """`inbox.inbound_finish` for many messages, in one statement and one commit."""
    InboundMessage.objects.finish_many(
        [
            (
                f.outcome,
                f.reason,
                f.kind,
                f.asset_did,
                f.claim_id,
                f.record_id,
                f.message_id,
            )
            for f in finishes
        ]
    )
    return [None] * len(finishes)


def _requested_many(calls: list[dict[str, Any]]) -> list[tuple[ClaimRecord, bool]]:
    return claim_record_requested_many([RequestedClaim(**kw) for kw in calls])


def _finish_many(calls: list[dict[str, Any]]) -> list[None]:
    return inbound_finish_many([Finish(**kw) for kw in calls])


#: Single-row function -> the many-row function taking each call's keyword arguments.
BATCHED: Mapping[Callable[..., Any], Callable[[list[dict[str, Any]]], list[Any]]] = {
    transitions.claim_record_requested: _requested_many,
    inbox.inbound_finish: _finish_many,
    # The writes every credential of a burst makes (claims.issued, claims.moves).
    issued.claim_record_verified: issued.claim_record_verified_many,
    transitions.claim_record_stored: moves.claim_record_stored_many,
    transitions.claim_begin_publishing: moves.claim_begin_publishing_many,
    transitions.claim_record_written: moves.claim_record_written_many,
    transitions.claim_mark_published: moves.claim_mark_published_many,
}
