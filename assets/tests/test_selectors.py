from __future__ import annotations

import pytest

from assets.models import Asset, AssetKind
from assets.selectors import (
    asset_export_rows,
    asset_find_by_did,
    asset_get_by_did,
    asset_list,
)
from assets.services import asset_create_from_key
from assets.tests.conftest import make_key
from evops.protocol.errors import DIDError

pytestmark = pytest.mark.django_db


def test_lookup_accepts_every_did_form():
    key = make_key()
    asset = asset_create_from_key(private_key=key.hex)
    for form in (
        key.did,
        key.legacy_did,
        f"did:ethr:volta:{key.address.lower()}",
        f"did:ethr:0x{73799:x}:{key.address}",
    ):
        assert asset_get_by_did(form) == asset
        assert asset_find_by_did(form) == asset


def test_lookup_of_unknown_or_malformed_dids():
    assert asset_find_by_did(make_key().did) is None
    with pytest.raises(Asset.DoesNotExist):
        asset_get_by_did(make_key().did)
    with pytest.raises(DIDError):
        asset_find_by_did("did:web:example.org")


def test_asset_list_filters():
    car = asset_create_from_key(private_key=make_key().hex, kind=AssetKind.VEHICLE)
    charger = asset_create_from_key(
        private_key=make_key().hex, kind=AssetKind.CHARGE_POINT
    )
    Asset.objects.filter(pk=charger.pk).update(active=False)
    assert list(asset_list(kind=AssetKind.VEHICLE)) == [car]
    assert list(asset_list(active=True)) == [car]
    assert list(asset_list(active=False)) == [charger]
    assert list(asset_list()) == [car, charger]


def test_export_rows_carry_no_key_columns():
    key = make_key()
    asset_create_from_key(
        private_key=key.hex, kind=AssetKind.VEHICLE, external_id="NL-TNM-1", label="a"
    )
    assert list(asset_export_rows()) == [
        (key.did, key.address, "vehicle", "NL-TNM-1", "a")
    ]
