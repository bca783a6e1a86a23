from __future__ import annotations

import os

import pytest
from django.conf import settings
from django.db import IntegrityError
from django.test import override_settings

from assets import crypto, services
from assets.models import Asset, AssetKey, AssetKind
from assets.services import (
    AssetExists,
    ImportRejected,
    RotationFailed,
    asset_create_from_key,
    asset_generate,
    asset_import_keys,
    asset_rotate_encryption_keys,
)
from assets.signers import signer_for_asset
from assets.tests.conftest import (
    KEYSTORE_PASSWORD,
    make_key,
    write_keymanager,
    write_keystore,
)
from evops.protocol.errors import DIDError

pytestmark = pytest.mark.django_db

NEW_MASTER = ("k2", os.urandom(32))


def _snapshot() -> list[tuple[object, ...]]:
    return list(
        AssetKey.objects.order_by("pk").values_list(
            "pk", "key_id", "nonce", "ciphertext"
        )
    )


# --- create / generate ---------------------------------------------------------------


def test_create_from_key_stores_canonical_did_and_sealed_key():
    key = make_key()
    asset = asset_create_from_key(
        private_key=key.hex[2:].upper(),
        kind=AssetKind.VEHICLE,
        external_id="NL-TNM-C0001",
        label="van 1",
    )
    asset.refresh_from_db()
    assert asset.did == f"did:ethr:volta:{key.address}"
    assert asset.address == key.address
    assert (asset.kind, asset.chain, asset.active) == ("vehicle", "volta", True)
    assert asset.key.key_id == "test1"
    crypto.verify(
        crypto.SealedKey(
            asset.key.key_id,
            asset.key.algorithm,
            bytes(asset.key.nonce),
            bytes(asset.key.ciphertext),
        ),
        address=asset.address,
    )


def test_create_from_key_refuses_a_known_key_and_an_invalid_one():
    key = make_key()
    asset_create_from_key(private_key=key.hex)
    with pytest.raises(AssetExists, match=key.address):
        asset_create_from_key(private_key=key.hex)
    with pytest.raises(crypto.InvalidPrivateKey):
        asset_create_from_key(private_key="0x1234")
    assert Asset.objects.count() == 1


def test_create_on_ewc_uses_the_ewc_did():
    key = make_key()
    asset = asset_create_from_key(private_key=key.hex, chain="ewc")
    assert asset.did == f"did:ethr:ewc:{key.address}"


def test_generate_creates_usable_assets_with_running_labels():
    first = asset_generate(count=3, kind=AssetKind.CHARGE_POINT, label_prefix="cp-")
    more = asset_generate(count=2, kind=AssetKind.CHARGE_POINT, label_prefix="cp-")
    assert [a.label for a in first + more] == ["cp-1", "cp-2", "cp-3", "cp-4", "cp-5"]
    assert Asset.objects.filter(kind="charge_point").count() == 5
    assert AssetKey.objects.count() == 5
    for asset in Asset.objects.all():
        signature = signer_for_asset(asset).sign_message(b"ping")
        assert len(signature) == 65


def test_generate_validates_its_arguments():
    with pytest.raises(ValueError, match="at least 1"):
        asset_generate(count=0)
    with pytest.raises(ValueError, match="unknown kind"):
        asset_generate(count=1, kind="bicycle")


# --- import --------------------------------------------------------------------------


def test_keymanager_import_dedupes_and_reimport_is_a_noop(tmp_path):
    keys = [make_key() for _ in range(4)]
    rows = [(k.legacy_did, k.hex) for k in keys] + [(keys[0].legacy_did, keys[0].hex)]
    db = write_keymanager(tmp_path / "keymanager.db", rows)

    report = asset_import_keys(paths=[db], kind=AssetKind.VEHICLE)
    assert (report.entries, report.created, report.skipped) == (5, 4, 1)
    assert report.written and not report.problems
    assert set(Asset.objects.values_list("did", flat=True)) == {k.did for k in keys}
    assert set(Asset.objects.values_list("kind", flat=True)) == {"vehicle"}

    again = asset_import_keys(paths=[db])
    assert (again.created, again.skipped) == (0, 5)
    assert Asset.objects.count() == 4 and AssetKey.objects.count() == 4


def test_a_did_that_does_not_match_its_key_rejects_the_whole_import(tmp_path):
    good, bad, other = make_key(), make_key(), make_key()
    db = write_keymanager(
        tmp_path / "keymanager.db",
        [(good.legacy_did, good.hex), (other.legacy_did, bad.hex)],
    )
    with pytest.raises(ImportRejected) as info:
        asset_import_keys(paths=[db])
    problems = [str(p) for p in info.value.report.problems]
    assert problems == [
        f"{db}:2 (row id): " + services.ERR_DID_MISMATCH.format(address=bad.address)
    ]
    assert Asset.objects.count() == 0 and AssetKey.objects.count() == 0


def test_skip_invalid_imports_the_rest(tmp_path):
    good, bad, other = make_key(), make_key(), make_key()
    db = write_keymanager(
        tmp_path / "keymanager.db",
        [
            (good.legacy_did, good.hex),
            (other.legacy_did, bad.hex),
            ("did:ethr:nonsense", make_key().hex),
            (None, "0xnot-a-key"),
        ],
    )
    report = asset_import_keys(paths=[db], skip_invalid=True)
    assert report.created == 1 and report.written
    assert [p.location for p in report.problems] == [
        f"{db}:2 (row id)",
        f"{db}:3 (row id)",
        f"{db}:4 (row id)",
    ]
    assert report.problems[1].message.startswith("malformed DID")
    assert report.problems[2].message == crypto.INVALID_KEY
    assert list(Asset.objects.values_list("address", flat=True)) == [good.address]


def test_csv_import_with_kinds_external_ids_and_labels(tmp_path):
    a, b, c = make_key(), make_key(), make_key()
    path = tmp_path / "fleet.csv"
    path.write_text(
        "private_key,kind,external_id,label,did\n"
        f"{a.hex},vehicle,NL-TNM-1,van,{a.did}\n"
        f"{b.hex[2:].upper()},Charge-Point,EVSE-9,post,\n"
        f"{c.hex},,,\n"
    )
    report = asset_import_keys(paths=[path], kind=AssetKind.OTHER)
    assert report.created == 3
    rows = dict(Asset.objects.values_list("address", "kind"))
    assert rows == {a.address: "vehicle", b.address: "charge_point", c.address: "other"}
    assert Asset.objects.get(address=b.address).external_id == "EVSE-9"
    assert Asset.objects.get(address=a.address).label == "van"


def test_csv_problems_have_file_and_line(tmp_path):
    existing = asset_create_from_key(private_key=make_key().hex, external_id="EX-1")
    a, b, c, d = make_key(), make_key(), make_key(), make_key()
    path = tmp_path / "fleet.csv"
    path.write_text(
        "key,kind,external_id\n"
        f"{a.hex},bicycle,\n"
        f"{b.hex},vehicle,EX-1\n"
        f"{c.hex},vehicle,NEW-1\n"
        f"{d.hex},vehicle,NEW-1\n"
    )
    with pytest.raises(ImportRejected) as info:
        asset_import_keys(paths=[path])
    problems = {p.location: p.message for p in info.value.report.problems}
    assert set(problems) == {f"{path}:2", f"{path}:3", f"{path}:5"}
    assert problems[f"{path}:2"].startswith("unknown kind")
    assert problems[f"{path}:3"] == services.ERR_EXTERNAL_ID_TAKEN.format(
        external_id="'EX-1'", did=existing.did
    )
    assert f"first at {path}:4" in problems[f"{path}:5"]
    assert Asset.objects.count() == 1


def test_a_key_pasted_into_another_column_is_never_echoed(tmp_path):
    existing = asset_create_from_key(private_key=make_key().hex)
    leaked = make_key()
    Asset.objects.filter(pk=existing.pk).update(external_id=leaked.hex)
    path = tmp_path / "fleet.csv"
    path.write_text(f"key,external_id\n{make_key().hex},{leaked.hex}\n")
    with pytest.raises(ImportRejected) as info:
        asset_import_keys(paths=[path])
    message = str(info.value.report.problems[0])
    assert "hidden" in message and leaked.hex[2:] not in message


def test_keystore_import_asks_for_the_password_once(tmp_path):
    a, b = make_key(), make_key()
    write_keystore(tmp_path / "a.json", a)
    write_keystore(tmp_path / "b.json", b)
    asked = []

    def prompt() -> str:
        asked.append(1)
        return KEYSTORE_PASSWORD

    report = asset_import_keys(paths=[tmp_path], password=prompt)
    assert report.created == 2 and len(asked) == 1


def test_keystore_import_with_a_wrong_or_no_password(tmp_path):
    key = make_key()
    write_keystore(tmp_path / "a.json", key)
    with pytest.raises(ImportRejected) as info:
        asset_import_keys(paths=[tmp_path], password="wrong")
    assert info.value.report.problems[0].message == crypto.KEYSTORE_FAILED
    with pytest.raises(ImportRejected) as info:
        asset_import_keys(paths=[tmp_path])
    assert info.value.report.problems[0].message == services.ERR_KEYSTORE_LOCKED


def test_no_password_is_asked_without_keystores(tmp_path):
    key = make_key()
    path = tmp_path / "keys.txt"
    path.write_text(key.hex + "\n")

    def prompt() -> str:
        raise AssertionError("asked for a password")

    assert asset_import_keys(paths=[path], password=prompt).created == 1


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    keys = [make_key() for _ in range(5)]
    db = write_keymanager(
        tmp_path / "keymanager.db", [(k.legacy_did, k.hex) for k in keys]
    )
    monkeypatch.setattr(services, "BATCH_SIZE", 2)
    real = AssetKey.objects.bulk_create
    calls = []

    def failing_bulk_create(objs, *args, **kwargs):
        calls.append(len(objs))
        if len(calls) == 2:
            raise IntegrityError("simulated crash in the second batch")
        return real(objs, *args, **kwargs)

    monkeypatch.setattr(AssetKey.objects, "bulk_create", failing_bulk_create)
    with pytest.raises(crypto.KeyCustodyError, match="nothing was written"):
        asset_import_keys(paths=[db])
    assert calls == [2, 2]
    assert Asset.objects.count() == 0 and AssetKey.objects.count() == 0


def test_import_validates_the_default_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"):
        asset_import_keys(paths=[tmp_path], kind="bicycle")


# --- rotation ------------------------------------------------------------------------


def test_rotation_reseals_everything_under_the_first_key():
    assets = asset_generate(count=4)
    with override_settings(
        EVOPS_KEY_ENCRYPTION_KEYS=[NEW_MASTER, *settings.EVOPS_KEY_ENCRYPTION_KEYS]
    ):
        report = asset_rotate_encryption_keys()
        assert report.total == 4 and report.key_id == "k2"
        assert report.by_previous_key == {"test1": 4}
    assert set(AssetKey.objects.values_list("key_id", flat=True)) == {"k2"}
    with override_settings(EVOPS_KEY_ENCRYPTION_KEYS=[NEW_MASTER]):
        for asset in assets:
            signer_for_asset(Asset.objects.get(pk=asset.pk)).sign_message(b"after")


def test_rotation_is_all_or_nothing():
    assets = asset_generate(count=3)
    AssetKey.objects.filter(pk=assets[1].pk).update(ciphertext=os.urandom(48))
    before = _snapshot()
    with (
        override_settings(
            EVOPS_KEY_ENCRYPTION_KEYS=[NEW_MASTER, *settings.EVOPS_KEY_ENCRYPTION_KEYS]
        ),
        pytest.raises(RotationFailed) as info,
    ):
        asset_rotate_encryption_keys()
    assert assets[1].did in str(info.value)
    assert "nothing was changed" in str(info.value)
    assert _snapshot() == before


def test_rotation_without_the_old_key_names_the_setting():
    asset_generate(count=1)
    with (
        override_settings(EVOPS_KEY_ENCRYPTION_KEYS=[NEW_MASTER]),
        pytest.raises(RotationFailed, match="EVOPS_KEY_ENCRYPTION_KEYS"),
    ):
        asset_rotate_encryption_keys()
    assert set(AssetKey.objects.values_list("key_id", flat=True)) == {"test1"}


@pytest.mark.parametrize(
    ("form", "chain"),
    [
        ("did:ethr:{lower}", "volta"),
        ("did:ethr:{upper}", "volta"),
        ("did:ethr:volta:{address}", "volta"),
        ("did:ethr:ewc:{address}", "ewc"),
        ("did:ethr:0x12047:{address}", "volta"),
        ("did:ethr:0xf6:{lower}", "ewc"),
    ],
)
def test_every_did_form_of_the_key_is_accepted(tmp_path, form, chain):
    key = make_key()
    did = form.format(
        address=key.address,
        lower=key.address.lower(),
        upper="0x" + key.address[2:].upper(),
    )
    db = write_keymanager(tmp_path / "keymanager.db", [(did, key.hex)])
    asset_import_keys(paths=[db])
    asset = Asset.objects.get()
    assert asset.did == f"did:ethr:{chain}:{key.address}"
    assert asset.chain == chain


@pytest.mark.parametrize(
    "form",
    [
        "did:ethr:mainnet:{address}",  # unknown chain
        "did:ethr:0xzz:{address}",
        "did:ethr:0x1:{address}",  # unknown chain id
        "did:web:{address}",
        "did:ethr:volta:extra:{address}",
        "did:ethr:{badcase}",  # mixed case with a wrong checksum
        "did:ethr:0x1234",
    ],
)
def test_malformed_dids_are_reported_as_such(tmp_path, form):
    key = make_key()
    hexpart = key.address[2:]
    swapped = "".join(c.lower() if c.isupper() else c.upper() for c in hexpart)
    if swapped in (hexpart.lower(), hexpart.upper()):
        swapped = hexpart[:-1] + ("a" if hexpart[-1] != "a" else "b")
    did = form.format(address=key.address, badcase="0x" + swapped)
    db = write_keymanager(tmp_path / "keymanager.db", [(did, key.hex)])
    with pytest.raises(ImportRejected) as info:
        asset_import_keys(paths=[db])
    (problem,) = info.value.report.problems
    assert problem.message.startswith("malformed DID") or problem.message.startswith(
        "the DID does not match"
    )
    assert Asset.objects.count() == 0


def test_an_unknown_chain_is_refused_up_front(tmp_path):
    with pytest.raises(DIDError):
        asset_import_keys(paths=[tmp_path], chain="mainnet")
    with pytest.raises(DIDError):
        asset_generate(count=1, chain="mainnet")


def test_a_key_pasted_into_the_did_column_is_never_echoed(tmp_path):
    key, pasted = make_key(), make_key()
    path = tmp_path / "fleet.csv"
    path.write_text(
        "key,did\n"
        f"{key.hex},did:ethr:{pasted.hex[2:]}:{key.address}\n"
        f"{make_key().hex},did:ethr:{pasted.hex}\n"
        f"{make_key().hex},{pasted.hex}\n"
    )
    with pytest.raises(ImportRejected) as info:
        asset_import_keys(paths=[path])
    problems = info.value.report.problems
    assert len(problems) == 3
    for problem in problems:
        assert problem.message.startswith("malformed DID")
        for fragment in (pasted.hex[2:][i : i + 16] for i in range(0, 64, 16)):
            assert fragment not in str(problem).lower()
