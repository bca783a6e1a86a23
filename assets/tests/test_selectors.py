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
from evops.protocol.dids import DID
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


def test_assets_with_keys_loads_what_select_related_loads(django_assert_num_queries):
    from assets.models import SignerBackend
    from assets.selectors import assets_with_keys

    sealed = asset_create_from_key(private_key=make_key().hex)
    keyless = Asset.objects.create(
        did=make_key().did,
        address=DID.parse(make_key().did).address,
        signer_backend=SignerBackend.PKCS11,
        token_label="t",
        token_key_id="01",
        public_key="00" * 64,
    )
    keyless.refresh_from_db()
    wanted = [sealed.address, keyless.address, "0x" + "11" * 20]
    found = {asset.address: asset for asset in assets_with_keys(wanted)}
    assert set(found) == {sealed.address, keyless.address}
    expected = {
        asset.address: asset
        for asset in Asset.objects.select_related("key").filter(address__in=wanted)
    }
    for address, asset in found.items():
        other = expected[address]
        for field in Asset._meta.concrete_fields:
            assert getattr(asset, field.attname) == getattr(other, field.attname)
        assert not asset._state.adding
    with django_assert_num_queries(0):
        key = found[sealed.address].key
        assert key.asset is found[sealed.address]
        assert (bytes(key.nonce), bytes(key.ciphertext), key.key_id) == (
            bytes(expected[sealed.address].key.nonce),
            bytes(expected[sealed.address].key.ciphertext),
            expected[sealed.address].key.key_id,
        )
        assert Asset.key.is_cached(found[keyless.address])
        with pytest.raises(Asset.key.RelatedObjectDoesNotExist):
            _ = found[keyless.address].key
    assert assets_with_keys([]) == []
