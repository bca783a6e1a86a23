"""Recording a verified credential: the claim's three writes, for one or a burst.

Once `claims.verify` accepted a credential, its claim record takes three writes: an
earlier credential on the same claim id is set aside (a re-issue,
`lifecycle_records.claim_prepare_reissue`), the record moves requested → issued with
the token (`transitions.claim_record_issued`), and the token's facts (expiry, status
entry) are stored (`lifecycle_records.record_credential_facts`).
`claim_record_verified` makes them for one credential in one database call; the
listener's database threads gather a burst's calls (`claims.batches.BATCHED`) into
`claim_record_verified_many`, which makes them in one transaction for the usual
case (a requested record holding no token yet) and one by one for any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.db import transaction
from django.utils import timezone

from assets.models import Asset
from claims import lifecycle_records, moves, transitions
from claims.models import Actor, ClaimRecord


@dataclass(frozen=True)
class Verified:
    """One verified credential to record (`claim_record_verified`'s arguments)."""

    asset: Asset
    claim_id: str
    token: str
    token_sha256: str
    issuer_did: str
    role: str
    role_version: int | None
    actor: Actor
    details: Mapping[str, Any] | None = None
    hub_expiry: Any = None


def claim_record_verified(**fields: Any) -> ClaimRecord:
    """Record one verified credential (`Verified`'s fields); the record as it is now."""
    v = Verified(**fields)
    lifecycle_records.claim_prepare_reissue(
        asset=v.asset, claim_id=v.claim_id, token_sha256=v.token_sha256, actor=v.actor
    )
    record, _ = transitions.claim_record_issued(
        asset=v.asset, claim_id=v.claim_id, **_issued(v)
    )
    if record.token_sha256 == v.token_sha256:
        lifecycle_records.record_credential_facts(
            record.pk, v.token, hub_expiry=v.hub_expiry, actor=v.actor
        )
    return record


def _issued(v: Verified) -> dict[str, Any]:
    """What the requested → issued move takes from a verified credential."""
    return {
        "token": v.token,
        "token_sha256": v.token_sha256,
        "issuer_did": v.issuer_did,
        "role": v.role,
        "role_version": v.role_version,
        "actor": v.actor,
        "details": v.details,
    }


def _with_facts(move: moves.Move, facts: Mapping[str, Any], now: Any) -> moves.Move:
    """`move` also writing the token's facts (`record_credential_facts`' columns)."""
    return replace(move, fields={**move.fields, **facts, "lifecycle_checked_at": now})


def claim_record_verified_many(calls: Sequence[Mapping[str, Any]]) -> list[ClaimRecord]:
    """`claim_record_verified` for a burst; the records in the order given.

    Credentials whose record exists and holds no token yet (nothing to set aside:
    the re-issue step would do nothing) are recorded together: their moves in one
    go (`claims.moves`), their facts, one read of the records. Any other (no
    record yet, a token already there, the same claim twice) takes the single path.
    """
    wanted = [Verified(**c) for c in calls]
    results: list[ClaimRecord | None] = [None] * len(wanted)
    with transaction.atomic():
        rows = {
            (asset_id, claim_id): (pk, token_sha256)
            for pk, asset_id, claim_id, token_sha256 in ClaimRecord.objects.lock_named(
                [v.asset.pk for v in wanted], [v.claim_id for v in wanted]
            )
        }
        together: dict[int, tuple[int, Verified]] = {}
        for i, v in enumerate(wanted):
            row = rows.get((v.asset.pk, v.claim_id))
            if row is not None and not row[1] and row[0] not in together:
                together[row[0]] = (i, v)
        now, lease = timezone.now(), moves.publish_lease()
        # The token's facts go with the move (the same UPDATE); a status entry it
        # could not read is noted once the move happened, as the single path does.
        facts = {
            pk: lifecycle_records.credential_facts(v.token, v.hub_expiry)
            for pk, (_, v) in together.items()
        }
        errors = {pk: fact.pop("error", "") for pk, fact in facts.items()}
        moved = moves.transition_together(
            [
                _with_facts(
                    moves.issued_move(record_id=pk, now=now, lease=lease, **_issued(v)),
                    facts[pk],
                    now,
                )
                for pk, (_, v) in together.items()
            ]
        )
        for (pk, (_, v)), done in zip(together.items(), moved, strict=True):
            if done and errors[pk]:
                lifecycle_records.note_unusable_entry(pk, errors[pk], actor=v.actor)
        by_pk = {
            record.pk: record for record in ClaimRecord.objects.loaded(list(together))
        }
        for pk, (i, _) in together.items():
            results[i] = by_pk[pk]
    for i, call in enumerate(calls):
        if results[i] is None:
            results[i] = claim_record_verified(**call)
    return [r for r in results if r is not None]
