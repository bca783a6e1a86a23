"""Reads of assets. Nothing here loads key material (`AssetKey` stays untouched)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import QuerySet

from assets.models import Asset
from evops.protocol.dids import DID

EXPORT_COLUMNS = ("did", "address", "kind", "external_id", "label")


def asset_get_by_did(did: DID | str) -> Asset:
    """The asset of a DID in any accepted form (legacy, any case).

    Looks up by address, since every DID form of an account names the same key.
    Raises `DIDError` for a malformed DID and `Asset.DoesNotExist` for an unknown one.
    """
    return Asset.objects.get(address=DID.coerce(did).address)


def asset_find_by_did(did: DID | str) -> Asset | None:
    """Like `asset_get_by_did`, but None when there is no such asset."""
    return Asset.objects.filter(address=DID.coerce(did).address).first()


def asset_list(
    *, active: bool | None = None, kind: str | None = None
) -> QuerySet[Asset]:
    queryset = Asset.objects.all()
    if active is not None:
        queryset = queryset.filter(active=active)
    if kind is not None:
        queryset = queryset.filter(kind=kind)
    return queryset.order_by("id")


def asset_export_rows() -> Iterator[tuple[str, str, str, str, str]]:
    """Rows of DID, address, kind, external id, label for every asset, by id."""
    yield from (
        Asset.objects.order_by("id")
        .values_list(*EXPORT_COLUMNS)
        .iterator(chunk_size=2000)
    )
