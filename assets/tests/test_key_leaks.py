"""The leak guard: no test key ever shows up anywhere a person or a log could see it.

One run drives every path that touches keys (imports in all three formats with
duplicates and bad entries, rejections, generation, signing, rotation, export, every
error the custody layer raises, the admin) and then scans all the text it produced,
plus every column of the asset and key tables, for the hex of every test key, in any
case, with or without 0x.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.urls import reverse

from assets import crypto
from assets.importers import KeyEntry
from assets.models import Asset
from assets.services import ImportRejected, asset_import_keys
from assets.signers import signer_for_asset
from assets.tests.conftest import (
    KEYSTORE_PASSWORD,
    LEAK_GUARD,
    make_key,
    write_keymanager,
    write_keystore,
)

pytestmark = pytest.mark.django_db


def test_no_test_key_leaks_anywhere(tmp_path, admin_client, caplog):
    caplog.set_level("DEBUG")
    texts: dict[str, str] = {}
    keys = [make_key() for _ in range(6)]
    mismatched = make_key()
    pasted = make_key()

    db = write_keymanager(
        tmp_path / "keymanager.db",
        [
            (keys[0].legacy_did, keys[0].hex),
            (keys[1].legacy_did, keys[1].hex.upper().replace("0X", "0x")),
            (keys[0].legacy_did, keys[0].hex),  # duplicate row
            (keys[2].legacy_did, mismatched.hex),  # DID of another key
            (None, mismatched.hex[:-1]),  # truncated key
        ],
    )
    store = tmp_path / "keystore"
    store.mkdir()
    write_keystore(store / "UTC--2021--k3", keys[3])
    password_file = tmp_path / "password"
    password_file.write_text(KEYSTORE_PASSWORD)
    table = tmp_path / "fleet.csv"
    table.write_text(
        "key,kind,external_id,label\n"
        f"{keys[4].hex[2:]},vehicle,EX-4,{keys[4].hex[2:10]}\n"
        f"{keys[5].hex.upper()},charge point,EX-5,post\n"
        f"{pasted.hex},bicycle,{pasted.hex},{pasted.hex}\n"
    )
    paths = [str(db), str(store), str(table), "--password-file", str(password_file)]

    # The rejected run: problems on stderr, the reason in the CommandError.
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as rejected:
        call_command("import_asset_keys", *paths, stdout=out, stderr=err)
    texts["rejected command"] = out.getvalue() + err.getvalue() + str(rejected.value)
    assert Asset.objects.count() == 0

    with pytest.raises(ImportRejected) as info:
        asset_import_keys(paths=[db, table], password=KEYSTORE_PASSWORD)
    texts["import report"] = repr(info.value.report) + str(info.value)

    # The accepted run, then a re-run (all skipped).
    for run in ("first", "again"):
        out, err = io.StringIO(), io.StringIO()
        call_command(
            "import_asset_keys", *paths, "--skip-invalid", stdout=out, stderr=err
        )
        texts[f"import {run}"] = out.getvalue() + err.getvalue()
    assert Asset.objects.count() == 5  # keys[2] only lends its DID to a bad row

    out, err = io.StringIO(), io.StringIO()
    call_command("generate_asset_keys", "--count", "2", stdout=out, stderr=err)
    call_command("export_assets", stdout=out, stderr=err)
    texts["generate and export"] = out.getvalue() + err.getvalue()

    # Signing and every custody error, with reprs of what carries keys around.
    errors: list[BaseException] = []
    for asset in Asset.objects.filter(address__in=[k.address for k in keys]):
        signer = signer_for_asset(asset)
        signer.sign_message(b"hello")
        texts[f"signer {asset.pk}"] = repr(signer) + str(signer)
    address, sealed = crypto.seal_private_key(keys[0].hex)
    texts["sealed"] = repr(sealed) + repr(KeyEntry("x", key_hex=keys[0].hex))
    attempts: list[Callable[[], object]] = [
        lambda: crypto.seal_private_key(keys[0].hex[:-2]),
        lambda: crypto.seal_private_key(keys[0].hex + "00"),
        lambda: crypto.seal_private_key("0x" + keys[0].hex[2:-1] + "g"),
        lambda: crypto.verify(sealed, address=keys[1].address),
        lambda: crypto.verify(
            dataclasses.replace(sealed, ciphertext=os.urandom(48)), address=address
        ),
    ]
    for attempt in attempts:
        with pytest.raises(crypto.KeyCustodyError) as caught:
            attempt()
        errors.append(caught.value)
    for master in ([("test1", os.urandom(32))], [("other", os.urandom(32))]):
        with (
            override_settings(EVOPS_KEY_ENCRYPTION_KEYS=master),
            pytest.raises(crypto.KeyCustodyError) as caught,
        ):
            first = Asset.objects.get(address=keys[0].address)
            signer_for_asset(first).sign_hash(b"\x00" * 32)
        errors.append(caught.value)
    with pytest.raises(crypto.KeystoreError) as caught:
        crypto.seal_keystore({"crypto": {"cipher": "x"}}, "pw")
    errors.append(caught.value)
    texts["exceptions"] = "\n".join(
        f"{e!s} {e!r} {e.__cause__!r} {e.__context__!r}" for e in errors
    )

    # Rotation, forwards.
    out, err = io.StringIO(), io.StringIO()
    with override_settings(
        EVOPS_KEY_ENCRYPTION_KEYS=[
            ("k2", os.urandom(32)),
            *settings.EVOPS_KEY_ENCRYPTION_KEYS,
        ]
    ):
        call_command("rotate_encryption_key", stdout=out, stderr=err)
    texts["rotation"] = out.getvalue() + err.getvalue()

    # The admin, as a superuser: list, search, and every change page.
    changelist = reverse("admin:assets_asset_changelist")
    texts["admin list"] = admin_client.get(changelist).content.decode()
    texts["admin search"] = admin_client.get(
        changelist, {"q": keys[0].hex[2:10]}
    ).content.decode()
    for pk in Asset.objects.values_list("pk", flat=True):
        page = admin_client.get(reverse("admin:assets_asset_change", args=[pk]))
        assert page.status_code == 200
        texts[f"admin change {pk}"] = page.content.decode()

    # Every column of both tables, as the database renders it.
    with connection.cursor() as cursor:
        for table_name in ("assets_asset", "assets_assetkey"):
            cursor.execute(f"SELECT t::text FROM {table_name} t")
            texts[f"db {table_name}"] = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("SELECT nonce, ciphertext FROM assets_assetkey")
        raw = b"".join(bytes(a) + bytes(b) for a, b in cursor.fetchall())
    for key in [*keys, mismatched, pasted]:
        assert bytes.fromhex(key.hex[2:]) not in raw

    texts["logs"] = caplog.text
    assert texts["db assets_assetkey"].count("\n") == 6  # 7 rows: really scanned
    assert "EX-4" in texts["db assets_asset"]
    for where, text in texts.items():
        LEAK_GUARD.assert_clean(text, where)
    # Self-check: the guard does see a key when one is there.
    assert LEAK_GUARD.find(f"oops {keys[0].hex.upper()}")
    assert LEAK_GUARD.find(keys[0].hex[2:])
