"""Reads of the pipeline's tables that are more than a one-line filter."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Min
from django.utils import timezone

from assets.models import Asset
from claims.models import (
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    ListenerHeartbeat,
    MessageOutcome,
)


def asset_for_address(address: str) -> Asset | None:
    """The asset holding `address` (EIP-55), whatever chain label its DID carries.

    Its sealed key comes in the same query: the pipeline needs the asset's signer next.
    """
    return Asset.objects.select_related("key").filter(address=address).first()


def asset_for_claim_id(claim_id: str) -> Asset | None:
    """The asset of our claim record with this cache-server claim id, if any.

    Rejection notices go to the issuers' subjects (protocol.md §5), so the DID in the
    subject is not our asset's; the claim id is what ties the notice to us.
    """
    if not claim_id:
        return None
    record = (
        ClaimRecord.objects.select_related("asset").filter(claim_id=claim_id).first()
    )
    return record.asset if record is not None else None


def assets_for_reconciliation(dids: Sequence[str] | None = None) -> list[Asset]:
    """Active assets, or the ones named (by DID or address), in id order, each with
    its sealed key (reconciliation builds every asset's signer)."""
    query = Asset.objects.filter(active=True)
    if dids:
        from evops.protocol.dids import DID

        addresses = [DID.parse(text).address for text in dids]
        query = Asset.objects.filter(address__in=addresses)
    return list(query.select_related("key").order_by("id"))


def active_assets_page(*, after_id: int, limit: int) -> list[Asset]:
    """The next `limit` active assets with an id above `after_id`, in id order, each
    with its sealed key (reconciliation pages through the fleet)."""
    return list(
        Asset.objects.filter(active=True, id__gt=after_id)
        .select_related("key")
        .order_by("id")[:limit]
    )


@dataclass(frozen=True)
class KnownClaims:
    """One asset's claim ids evops waits on (`requested`) and holds `published`."""

    waiting: frozenset[str] = frozenset()
    published: frozenset[str] = frozenset()


def known_claims(asset_ids: Sequence[int]) -> dict[int, KnownClaims]:
    """`KnownClaims` of each asset, in one query (assets without any left out)."""
    rows: dict[int, tuple[set[str], set[str]]] = {}
    for asset_id, claim_id, status in ClaimRecord.objects.filter(
        asset_id__in=asset_ids,
        status__in=(ClaimStatus.REQUESTED, ClaimStatus.PUBLISHED),
    ).values_list("asset_id", "claim_id", "status"):
        waiting, published = rows.setdefault(asset_id, (set(), set()))
        (waiting if status == ClaimStatus.REQUESTED else published).add(claim_id)
    return {
        asset_id: KnownClaims(frozenset(waiting), frozenset(published))
        for asset_id, (waiting, published) in rows.items()
    }


LIFECYCLE_MANAGED = (
    ClaimStatus.PUBLISHED,
    ClaimStatus.EXPIRED,
    ClaimStatus.REVOKED,
    ClaimStatus.SUPERSEDED,
)


def reusable_service_id(
    *,
    asset_id: int,
    role: str,
    role_version: int | None,
    exclude_pk: int,
    entries: Iterable[dict[str, object]],
) -> str:
    """Id of a document entry that holds an earlier credential of the same role.

    protocol.md §7: a new credential for the same claimType and version replaces the
    earlier entry (same service id). The on-chain entry carries no claim type, so
    the earlier credential is recognised by its hash among this asset's records.
    """
    by_hash = {
        str(entry.get("hash")): str(entry.get("id"))
        for entry in entries
        if isinstance(entry.get("hash"), str) and isinstance(entry.get("id"), str)
    }
    if not by_hash:
        return ""
    known = (
        ClaimRecord.objects.filter(
            asset_id=asset_id,
            role=role,
            role_version=role_version,
            token_sha256__in=list(by_hash),
        )
        .exclude(pk=exclude_pk)
        # Entries the lifecycle removes itself (claims.lifecycle) are not reused:
        # the renewal gets its own id, and the old entry is removed once the new
        # one is on chain, so readers keyed by id and those keyed by name and
        # value both see exactly one entry.
        .exclude(status__in=LIFECYCLE_MANAGED)
        .order_by("-id")
        .values_list("token_sha256", flat=True)
        .first()
    )
    return by_hash.get(known, "") if known else ""


def inbox_backlog(now: datetime | None = None) -> tuple[int, float]:
    """(pending messages, age in seconds of the oldest one)."""
    now = now or timezone.now()
    row = InboundMessage.objects.filter(outcome=MessageOutcome.PENDING).aggregate(
        count=Count("id"), oldest=Min("received_at")
    )
    oldest = row["oldest"]
    return int(row["count"] or 0), (now - oldest).total_seconds() if oldest else 0.0


def claims_by_status() -> dict[str, int]:
    counts = dict.fromkeys(ClaimStatus.values, 0)
    for status, count in ClaimRecord.objects.values_list("status").annotate(
        n=Count("id")
    ):
        counts[status] = count
    return counts


def listener_heartbeats() -> list[ListenerHeartbeat]:
    return list(ListenerHeartbeat.objects.order_by("name"))


def claims_for_retry(
    *,
    statuses: Sequence[str] = (ClaimStatus.FAILED,),
    asset_dids: Sequence[str] = (),
    claim_ids: Sequence[str] = (),
) -> list[ClaimRecord]:
    """Records a staff retry would act on (`retry_claims`, the console)."""
    query = ClaimRecord.objects.select_related("asset").filter(status__in=statuses)
    if asset_dids:
        from evops.protocol.dids import DID

        addresses = [DID.parse(text).address for text in asset_dids]
        query = query.filter(asset__address__in=addresses)
    if claim_ids:
        query = query.filter(claim_id__in=claim_ids)
    return list(query.order_by("id"))
