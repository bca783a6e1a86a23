"""The lifecycle's database side: a credential's facts and the moves after publication.

Synchronous (the admin and the command call them directly; the async sweep in
`claims.lifecycle` runs them in a database thread). Every status change goes through
`claims.transitions.claim_transition`, the compare-and-set, so a sweep in the
listener and one run from the command never act twice on one record: whoever wins
the move into expired / revoked / superseded is the one that removes the entry.

A credential's facts are read from its token when it is accepted (and backfilled by
the sweep for records published before this module existed): the expiry from `exp`
(seconds, milliseconds written by mistake, the "never" value, or missing), or the
hub's `expirationTimestamp` (milliseconds as a string) when that is earlier, and the
`credentialStatus` entry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from assets.models import Asset
from claims.history import claim_note
from claims.models import Actor, ClaimRecord, ClaimStatus
from claims.retry import MAX_ERROR
from claims.transitions import claim_transition
from evops.protocol.credentials import NEVER_EXPIRES, parse_time
from evops.protocol.jwt import decode_token
from evops.protocol.status_list import StatusListError, parse_status_entry

log = logging.getLogger(__name__)

# Statuses whose service entry the lifecycle removes from the document.
ENDED_STATUSES = (ClaimStatus.EXPIRED, ClaimStatus.REVOKED, ClaimStatus.SUPERSEDED)

MSG_EXPIRED = "Expired at {at}; its service entry will be removed."
MSG_REVOKED = "Revoked by {revoker} ({source}); its service entry will be removed."
MSG_SUPERSEDED = (
    "Replaced by claim {claim_id} (published); its service entry will be removed."
)
MSG_REISSUED = (
    "The issuer re-issued claim {claim_id} with a new token; this record keeps the "
    "earlier credential until the new one is published."
)
MSG_REVOKED_NOT_REVIVED = (
    "The issuer re-issued claim {claim_id}, which was revoked; not taken up "
    "automatically (staff decide)."
)
MSG_BAD_STATUS_ENTRY = "The token's credentialStatus is unusable: {error}"

# A datetime cannot hold the "never" value (year 285 million): anything past
# year 9000 is read as never expiring.
_LATEST = datetime(9000, 1, 1, tzinfo=UTC).timestamp()


def parse_hub_expiry(value: Any) -> int | None:
    """The hub's `expirationTimestamp` (milliseconds, a Postgres bigint sent as a
    string, sometimes a number) as seconds; None when absent or unreadable."""
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 20:
            return None
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value < 0:  # NaN
        return None
    return parse_time(value / 1000 if value < NEVER_EXPIRES else value)


def expiry_of(payload: Mapping[str, Any], hub_expiry: Any = None) -> datetime | None:
    """When the credential stops being valid; None when it never does.

    The token's `exp` (through `parse_time`: seconds, milliseconds, the never
    value) and the hub's `expirationTimestamp`; the earlier one counts.
    """
    candidates = []
    if "exp" in payload:
        exp = parse_time(payload["exp"])
        if exp is not None:
            candidates.append(exp)
    hub = parse_hub_expiry(hub_expiry)
    if hub is not None:
        candidates.append(hub)
    finite = [c for c in candidates if c < NEVER_EXPIRES and c < _LATEST]
    if not finite:
        return None
    return datetime.fromtimestamp(min(finite), tz=UTC)


def credential_facts(token: str, hub_expiry: Any = None) -> dict[str, Any]:
    """The record fields a token determines: expiry and status-list entry.

    A malformed `credentialStatus` is reported under `"error"` (the record keeps
    no entry; staff see why) rather than raising.
    """
    try:
        payload = decode_token(token).payload
    except Exception:
        return {}
    facts: dict[str, Any] = {
        "expires_at": expiry_of(payload, hub_expiry),
        "status_list_url": "",
        "status_list_index": None,
    }
    try:
        entry = parse_status_entry(payload.get("credentialStatus"))
    except StatusListError as exc:
        facts["error"] = MSG_BAD_STATUS_ENTRY.format(error=exc)
    else:
        if entry is not None:
            facts["status_list_url"] = entry.url
            facts["status_list_index"] = entry.index
    return facts


def record_credential_facts(
    record_id: int, token: str, *, hub_expiry: Any = None, actor: Actor
) -> None:
    """Store the token's facts on the record (at acceptance, or backfilled)."""
    facts = credential_facts(token, hub_expiry)
    error = facts.pop("error", "")
    ClaimRecord.objects.filter(pk=record_id).update(
        lifecycle_checked_at=timezone.now(), **facts
    )
    if error:
        note_unusable_entry(record_id, error, actor=actor)


def note_unusable_entry(record_id: int, error: str, *, actor: Actor) -> None:
    """Note on the record that its token's status-list entry could not be read."""
    claim_note(record_id, actor=actor, kind="status_entry_unusable", message=error)


def claim_prepare_reissue(
    *, asset: Asset, claim_id: str, token_sha256: str, actor: Actor
) -> bool:
    """A verified token for a claim id whose record holds another credential.

    The issuer re-issued on the same id (overwriting `issuedToken`). The record is
    unique per (asset, claim id), so the earlier credential's record is renamed
    (`<id>@<pk>`) and keeps its entry until the new one is published; the sweep then
    supersedes it. Returns True when it renamed one.
    """
    with transaction.atomic():
        record = (
            ClaimRecord.objects.select_for_update()
            .filter(asset=asset, claim_id=claim_id)
            .first()
        )
        if record is None or not record.token_sha256:
            return False
        if record.token_sha256 == token_sha256:
            return False
        if record.status == ClaimStatus.REVOKED:
            claim_note(
                record.pk,
                actor=actor,
                kind="reissue_ignored",
                message=MSG_REVOKED_NOT_REVIVED.format(claim_id=claim_id),
                details={"token_sha256": token_sha256},
            )
            return False
        if record.status not in (
            ClaimStatus.PUBLISHED,
            ClaimStatus.EXPIRED,
            ClaimStatus.SUPERSEDED,
        ):
            return False
        renamed = f"{claim_id}@{record.pk}"[-100:]
        ClaimRecord.objects.filter(pk=record.pk).update(claim_id=renamed)
        claim_note(
            record.pk,
            actor=actor,
            kind="reissued",
            message=MSG_REISSUED.format(claim_id=claim_id),
            details={
                "claim_id": claim_id,
                "renamed_to": renamed,
                "new_token_sha256": token_sha256,
            },
        )
    return True


def claims_needing_facts(limit: int = 1000) -> list[int]:
    """Published records whose facts were never read (published before 0003)."""
    return list(
        ClaimRecord.objects.filter(
            status=ClaimStatus.PUBLISHED, lifecycle_checked_at__isnull=True
        )
        .exclude(token="")
        .values_list("pk", flat=True)[:limit]
    )


def backfill_facts(*, actor: Actor) -> int:
    count = 0
    for pk, token in ClaimRecord.objects.filter(
        pk__in=claims_needing_facts()
    ).values_list("pk", "token"):
        record_credential_facts(pk, token, actor=actor)
        count += 1
    return count


def supersede_replaced(*, actor: Actor, asset_ids: Iterable[int] = ()) -> list[int]:
    """Where an asset has two published records of one role, keep the newest (a
    renewal, a re-issue: the issuer's latest word) and supersede the others.

    Both are published (confirmed from chain), so removing the older entry never
    leaves the role without one.
    """
    query = ClaimRecord.objects.filter(status=ClaimStatus.PUBLISHED).exclude(role="")
    if asset_ids:
        query = query.filter(asset_id__in=list(asset_ids))
    groups: dict[tuple[int, str], list[ClaimRecord]] = {}
    for record in query.order_by("id"):
        groups.setdefault((record.asset_id, record.role), []).append(record)
    moved: list[int] = []
    for records in groups.values():
        if len(records) < 2:
            continue
        keeper = max(records, key=lambda record: record.pk)
        for record in records:
            if record.pk == keeper.pk:
                continue
            if claim_transition(
                record_id=record.pk,
                expected=[ClaimStatus.PUBLISHED],
                to=ClaimStatus.SUPERSEDED,
                actor=actor,
                message=MSG_SUPERSEDED.format(claim_id=keeper.claim_id),
                details={
                    "superseded_by": keeper.pk,
                    "claim_id": keeper.claim_id,
                    "token_sha256": keeper.token_sha256,
                },
                superseded_by=keeper,
                ended_at=timezone.now(),
            ):
                moved.append(record.pk)
    return moved


def claim_mark_expired(*, record_id: int, actor: Actor) -> bool:
    record = ClaimRecord.objects.filter(pk=record_id).first()
    if record is None:
        return False
    at = record.expires_at.isoformat() if record.expires_at else "?"
    return claim_transition(
        record_id=record_id,
        expected=[ClaimStatus.PUBLISHED],
        to=ClaimStatus.EXPIRED,
        actor=actor,
        message=MSG_EXPIRED.format(at=at),
        details={"expires_at": at},
        ended_at=timezone.now(),
    )


def claim_mark_revoked(
    *, record_id: int, revoker: str, source: str, actor: Actor, details: Any = None
) -> bool:
    """→ revoked (from published, or from an ended state whose entry may remain)."""
    message = MSG_REVOKED.format(revoker=revoker or "unknown", source=source)
    return claim_transition(
        record_id=record_id,
        expected=[
            ClaimStatus.PUBLISHED,
            ClaimStatus.EXPIRED,
            ClaimStatus.SUPERSEDED,
        ],
        to=ClaimStatus.REVOKED,
        actor=actor,
        message=message,
        details={**(details or {}), "revoker": revoker, "source": source},
        revoked_by=revoker[:100],
        ended_at=timezone.now(),
        last_error=message[:MAX_ERROR],
    )


def role_revoked_for(asset_id: int, role: str) -> bool:
    """A revoked role is never requested again automatically."""
    return ClaimRecord.objects.filter(
        asset_id=asset_id, role=role, status=ClaimStatus.REVOKED
    ).exists()


def claim_take_renewal(*, record_id: int, again: bool = False) -> bool:
    """Take the record's renewal (once): True for exactly one caller.

    `again` (a staff "renew now") takes it even when one was filed before.
    """
    query = ClaimRecord.objects.filter(pk=record_id, status=ClaimStatus.PUBLISHED)
    if not again:
        query = query.filter(renewal_requested_at__isnull=True)
    return query.update(renewal_requested_at=timezone.now()) == 1


def claim_renewal_filed(
    *, record_id: int, claim_id: str, reason: str, actor: Actor, manual: bool = False
) -> None:
    ClaimRecord.objects.filter(pk=record_id).update(renewal_claim_id=claim_id[:100])
    who = "on request" if manual else "inside the renewal window"
    claim_note(
        record_id,
        actor=actor,
        kind="renewal_requested",
        message=f"Renewal requested {who}: new claim {claim_id or '(pending)'} "
        f"({reason}).",
        details={"claim_id": claim_id, "reason": reason, "manual": manual},
    )


def claim_renewal_failed(*, record_id: int, error: str, actor: Actor) -> None:
    """Give the renewal back (a later sweep files it) and say why."""
    ClaimRecord.objects.filter(pk=record_id).update(
        renewal_requested_at=None, last_error=error[:MAX_ERROR]
    )
    claim_note(
        record_id,
        actor=actor,
        kind="renewal_failed",
        message=f"Renewal request failed, will retry: {error}",
    )


def renewal_due(*, window: timedelta, now: datetime | None = None) -> list[int]:
    now = now or timezone.now()
    return list(
        ClaimRecord.objects.filter(
            status=ClaimStatus.PUBLISHED,
            renewal_requested_at__isnull=True,
            expires_at__isnull=False,
            expires_at__lte=now + window,
        ).values_list("pk", flat=True)
    )


def expired_due(now: datetime | None = None) -> list[int]:
    now = now or timezone.now()
    return list(
        ClaimRecord.objects.filter(
            status=ClaimStatus.PUBLISHED, expires_at__lte=now
        ).values_list("pk", flat=True)
    )


def removal_due() -> list[int]:
    return list(
        ClaimRecord.objects.filter(
            status__in=ENDED_STATUSES, entry_removed_at__isnull=True
        )
        .exclude(token_sha256="")
        .order_by("id")
        .values_list("pk", flat=True)
    )


def revocation_candidates() -> list[int]:
    """Records whose entry is (or may still be) in the document: check revocation."""
    return list(
        ClaimRecord.objects.filter(
            Q(status=ClaimStatus.PUBLISHED)
            | Q(
                status__in=[ClaimStatus.EXPIRED, ClaimStatus.SUPERSEDED],
                entry_removed_at__isnull=True,
            )
        )
        .order_by("id")
        .values_list("pk", flat=True)
    )


def claim_entry_removed(
    *, record_id: int, tx_hash: str, message: str, actor: Actor
) -> None:
    ClaimRecord.objects.filter(pk=record_id).update(
        entry_removed_at=timezone.now(), removal_tx_hash=tx_hash
    )
    claim_note(
        record_id,
        actor=actor,
        kind="entry_removed",
        message=message,
        details={"tx_hash": tx_hash},
    )


def claim_lifecycle_error(*, record_id: int, error: str, actor: Actor) -> None:
    """A check or removal that failed: shown on the record; noted once per change."""
    record = ClaimRecord.objects.filter(pk=record_id).values("last_error").first()
    if record is None:
        return
    text = error[:MAX_ERROR]
    if record["last_error"] != text:
        ClaimRecord.objects.filter(pk=record_id).update(last_error=text)
        claim_note(record_id, actor=actor, kind="lifecycle_error", message=text)
