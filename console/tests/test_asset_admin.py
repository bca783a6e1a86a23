from __future__ import annotations

import pytest
from django.urls import reverse

from assets.models import Asset, AssetKey, AssetKind
from assets.services import asset_create_from_key
from assets.tests.conftest import LEAK_GUARD, make_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet():
    car_key, post_key = make_key(), make_key()
    car = asset_create_from_key(
        private_key=car_key.hex,
        kind=AssetKind.VEHICLE,
        external_id="NL-TNM-C0001",
        label="delivery van",
    )
    post = asset_create_from_key(
        private_key=post_key.hex,
        kind=AssetKind.CHARGE_POINT,
        external_id="EVSE-42",
        label="depot charger",
        chain="ewc",
    )
    return car, post


def _material(asset: Asset) -> list[str]:
    row = AssetKey.objects.get(pk=asset.pk)
    return [bytes(row.ciphertext).hex(), bytes(row.nonce).hex()]


def test_changelist_shows_the_columns_and_no_key_material(admin_client, fleet):
    car, post = fleet
    response = admin_client.get(reverse("admin:assets_asset_changelist"))
    html = response.content.decode()
    assert response.status_code == 200
    # Label first, the DID short (full on hover, copyable), no address column.
    for text in (car.did, car.address[:6], "delivery van", "Vehicle"):
        assert text in html
    assert post.did in html
    LEAK_GUARD.assert_clean(html, "admin changelist")
    for value in _material(car) + _material(post):
        assert value not in html.lower()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("NL-TNM", "car"),
        ("depot", "post"),
        ("did:ethr:ewc", "post"),
    ],
)
def test_search(admin_client, fleet, query, expected):
    car, post = fleet
    wanted = {"car": car, "post": post}[expected]
    other = post if wanted is car else car
    response = admin_client.get(reverse("admin:assets_asset_changelist"), {"q": query})
    html = response.content.decode()
    assert wanted.did in html and other.did not in html


def test_search_by_address(admin_client, fleet):
    car, post = fleet
    response = admin_client.get(
        reverse("admin:assets_asset_changelist"), {"q": car.address[2:12]}
    )
    html = response.content.decode()
    assert car.did in html and post.did not in html


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"kind__exact": "vehicle"}, "car"),
        ({"chain__exact": "ewc"}, "post"),
        ({"active__exact": "0"}, "post"),
    ],
)
def test_filters(admin_client, fleet, params, expected):
    car, post = fleet
    Asset.objects.filter(pk=post.pk).update(active=False)
    wanted = {"car": car, "post": post}[expected]
    other = post if wanted is car else car
    response = admin_client.get(reverse("admin:assets_asset_changelist"), params)
    html = response.content.decode()
    assert wanted.did in html and other.did not in html


def test_change_form_shows_custody_but_no_key_material(admin_client, fleet):
    car, _ = fleet
    response = admin_client.get(reverse("admin:assets_asset_change", args=[car.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "sealed with master key test1" in html
    assert 'name="ciphertext"' not in html and 'name="nonce"' not in html
    LEAK_GUARD.assert_clean(html, "admin change form")
    for value in _material(car):
        assert value not in html.lower()


def test_editing_keeps_did_address_and_key(admin_client, fleet):
    car, _ = fleet
    before = _material(car)
    response = admin_client.post(
        reverse("admin:assets_asset_change", args=[car.pk]),
        {
            "kind": "other",
            "external_id": "NL-TNM-C0002",
            "label": "renamed",
            "active": "on",
            "did": "did:ethr:volta:0x0000000000000000000000000000000000000000",
        },
    )
    assert response.status_code == 302
    car.refresh_from_db()
    assert (car.label, car.external_id, car.kind) == (
        "renamed",
        "NL-TNM-C0002",
        "other",
    )
    assert car.did.endswith(car.address)
    assert _material(car) == before


def test_a_taken_external_id_is_a_form_error(admin_client, fleet):
    car, _post = fleet
    response = admin_client.post(
        reverse("admin:assets_asset_change", args=[car.pk]),
        {"kind": "vehicle", "external_id": "EVSE-42", "label": "", "active": "on"},
    )
    assert response.status_code == 200
    car.refresh_from_db()
    assert car.external_id == "NL-TNM-C0001"


def test_assets_cannot_be_added_in_the_admin_and_keys_are_not_registered(
    admin_client, fleet
):
    car, _ = fleet
    assert admin_client.get(reverse("admin:assets_asset_add")).status_code == 403
    delete = reverse("admin:assets_asset_delete", args=[car.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Asset.objects.filter(pk=car.pk).exists()
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert "assetkey" not in index.lower()


def test_change_form_shows_where_a_token_key_lives(admin_client, token_settings):
    from assets.models import SignerBackend
    from assets.services import asset_generate

    (asset,) = asset_generate(count=1, backend=SignerBackend.PKCS11)
    response = admin_client.get(reverse("admin:assets_asset_change", args=[asset.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert f"in PKCS#11 token &#x27;{token_settings.label}&#x27;" in html
    assert f"key id {asset.token_key_id}" in html
    assert token_settings.pin not in html
