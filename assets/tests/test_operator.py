"""The relay operator account: commands, selection, sealing, rotation, check, admin.

Every key here comes from `make_key` (or, for generated keys, is registered with the
leak guard right after generation), so the autouse guard fails any test whose output
or logs show one; `test_operator_key_never_leaks` also scans the admin pages, the
exceptions and the database rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.urls import reverse
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.datatypes import Signature

from assets import crypto
from assets.checks import W001, check_relay_operator
from assets.management.commands.import_asset_keys import ERR_NO_TERMINAL
from assets.models import AssetKey, OperatorAccount
from assets.selectors import (
    OPERATOR_AMBIGUOUS,
    OPERATOR_NOT_CONFIGURED,
    OPERATOR_UNKNOWN,
    operator_account_for,
)
from assets.services import (
    ERR_OPERATOR_EXISTS,
    ERR_OPERATOR_FILE,
    ERR_OPERATOR_IS_ASSET,
    OperatorExists,
    asset_create_from_key,
    asset_rotate_encryption_keys,
    operator_generate,
    operator_import_key,
)
from assets.signers import (
    EncryptedKeySigner,
    OperatorNotConfigured,
    operator_signer,
    sealed_from_row,
    signer_for_asset,
)
from assets.tests import conftest as fixtures
from assets.tests.conftest import (
    KEYSTORE_PASSWORD,
    LEAK_GUARD,
    make_key,
    write_keystore,
)

pytestmark = pytest.mark.django_db

DIGEST = bytes(range(32))


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def hex_file(tmp_path, key: fixtures.TestKey, name: str = "operator.key"):
    path = tmp_path / name
    path.write_text(key.hex + "\n")
    return path


def register_generated(operator: OperatorAccount) -> str:
    """Hand the leak guard a generated key (tests only: the one unsealing here)."""
    secret = crypto._open(
        sealed_from_row(operator), operator.address, crypto.OPERATOR_KEY
    )
    return LEAK_GUARD.register(secret.hex())


def recover_hash(digest: bytes, signature: bytes) -> str:
    sig = Signature(signature[:64] + bytes([signature[64] - 27]))
    return sig.recover_public_key_from_msg_hash(digest).to_checksum_address()


def assert_signs_as(signer, address: str) -> None:
    assert signer.address == address
    assert recover_hash(DIGEST, signer.sign_hash(DIGEST)) == address
    message = signer.sign_message(b"relay me")
    assert Account.recover_message(encode_defunct(b"relay me"), signature=message) == (
        address
    )
    raw = signer.sign_transaction(
        {
            "to": address,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 10**9,
            "maxPriorityFeePerGas": 1,
            "nonce": 0,
            "chainId": 73799,
        }
    )
    assert Account.recover_transaction(raw) == address


# --- generate_operator_key / import_operator_key --------------------------------------


def test_generate_operator_key_prints_the_address_to_fund_and_signs():
    out, err = run("generate_operator_key", "--label", "relay")
    operator = OperatorAccount.objects.get()
    register_generated(operator)
    assert operator.label == "relay"
    assert operator.chain == "volta"  # CHAIN_ID 73799
    assert operator.key_id == "test1"
    assert f"Generated operator account {operator.address}" in out
    assert f"Fund {operator.address}" in out
    assert err == ""
    assert_signs_as(operator_signer(), operator.address)


def test_import_operator_key_from_a_hex_file_round_trip(tmp_path):
    key = make_key()
    out, _ = run("import_operator_key", str(hex_file(tmp_path, key)), "--label", "ops")
    assert f"Imported operator account {key.address} on chain 'volta'" in out
    operator = OperatorAccount.objects.get()
    assert (operator.address, operator.label) == (key.address, "ops")
    signer = operator_signer()
    assert isinstance(signer, EncryptedKeySigner)
    assert_signs_as(signer, key.address)
    assert "operator-key" in repr(signer)


def test_import_operator_key_from_a_keystore(tmp_path):
    key = make_key()
    password_file = tmp_path / "password"
    password_file.write_text(KEYSTORE_PASSWORD + "\n")
    path = write_keystore(tmp_path / "UTC--operator", key)
    out, _ = run(
        "import_operator_key", str(path), "--password-file", str(password_file)
    )
    assert key.address in out
    assert_signs_as(operator_signer(), key.address)


def test_import_operator_keystore_with_a_wrong_password(tmp_path):
    key = make_key()
    password_file = tmp_path / "password"
    password_file.write_text("not the password")
    path = write_keystore(tmp_path / "UTC--operator", key)
    with pytest.raises(CommandError) as info:
        run("import_operator_key", str(path), "--password-file", str(password_file))
    assert str(info.value) == crypto.KEYSTORE_FAILED
    LEAK_GUARD.assert_clean(str(info.value), "error")
    assert not OperatorAccount.objects.exists()


def test_import_operator_keystore_asks_for_the_password(tmp_path, monkeypatch):
    key = make_key()
    path = write_keystore(tmp_path / "UTC--operator", key)
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return KEYSTORE_PASSWORD

    monkeypatch.setattr("getpass.getpass", prompt)
    monkeypatch.setattr("sys.stdin", _Terminal())
    run("import_operator_key", str(path))
    assert asked == ["Keystore password: "]
    assert OperatorAccount.objects.get().address == key.address


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_import_operator_keystore_without_a_terminal_is_a_clear_error(
    tmp_path, monkeypatch
):
    path = write_keystore(tmp_path / "UTC--operator", make_key())
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(CommandError) as info:
        run("import_operator_key", str(path))
    assert str(info.value) == ERR_NO_TERMINAL
    assert not OperatorAccount.objects.exists()


@pytest.mark.parametrize(
    "content",
    [
        "{key} {other}",  # two keys
        "address,key\n{address},{key}\n",  # a CSV is not an operator key file
        "{{not json",
    ],
)
def test_import_operator_key_refuses_other_files_without_echoing(tmp_path, content):
    key, other = make_key(), make_key()
    path = tmp_path / "operator.txt"
    path.write_text(content.format(key=key.hex, other=other.hex, address=key.address))
    with pytest.raises(CommandError) as info:
        run("import_operator_key", str(path))
    assert str(info.value) in {
        ERR_OPERATOR_FILE.format(path=path),
        f"{path}: {crypto.INVALID_KEY}",
    }
    LEAK_GUARD.assert_clean(str(info.value), "error")
    assert not OperatorAccount.objects.exists()


def test_import_operator_key_refuses_a_malformed_key(tmp_path):
    key = make_key()
    path = tmp_path / "operator.key"
    path.write_text(key.hex[:-1])
    with pytest.raises(CommandError) as info:
        run("import_operator_key", str(path))
    assert str(info.value) == f"{path}: {crypto.INVALID_KEY}"


def test_import_operator_key_twice_or_an_asset_key(tmp_path):
    key = make_key()
    run("import_operator_key", str(hex_file(tmp_path, key)))
    with pytest.raises(CommandError) as info:
        run("import_operator_key", str(hex_file(tmp_path, key)))
    assert str(info.value) == ERR_OPERATOR_EXISTS.format(address=key.address)

    asset_key = make_key()
    asset = asset_create_from_key(private_key=asset_key.hex)
    with pytest.raises(OperatorExists) as caught:
        operator_import_key(path=hex_file(tmp_path, asset_key, "asset.key"))
    assert str(caught.value) == ERR_OPERATOR_IS_ASSET.format(
        address=asset_key.address, did=asset.did
    )
    assert OperatorAccount.objects.count() == 1


def test_import_operator_key_missing_file(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        run("import_operator_key", str(tmp_path / "absent"))


def test_a_second_operator_says_to_choose_one(tmp_path):
    first = operator_generate(label="old")
    register_generated(first)
    key = make_key()
    _, err = run("import_operator_key", str(hex_file(tmp_path, key)))
    assert f"CHAIN_OPERATOR_ADDRESS={key.address}" in err


# --- choosing the operator ------------------------------------------------------------


def test_no_operator_is_a_clear_error():
    with pytest.raises(OperatorNotConfigured) as info:
        operator_signer()
    assert str(info.value) == OPERATOR_NOT_CONFIGURED.format(chain="volta")
    assert "generate_operator_key" in str(info.value)
    assert "CHAIN_OPERATOR_ADDRESS" in str(info.value)


def test_several_operators_need_the_setting(settings, tmp_path):
    keys = [make_key(), make_key()]
    for number, key in enumerate(keys):
        operator_import_key(path=hex_file(tmp_path, key, f"{number}.key"))
    with pytest.raises(OperatorNotConfigured) as info:
        operator_signer()
    assert str(info.value) == OPERATOR_AMBIGUOUS.format(
        count=2,
        chain="volta",
        addresses=f"{keys[0].address}, {keys[1].address}",
    )
    settings.CHAIN_OPERATOR_ADDRESS = keys[1].address.lower()
    assert operator_signer().address == keys[1].address
    settings.CHAIN_OPERATOR_ADDRESS = make_key().address
    with pytest.raises(OperatorNotConfigured) as info:
        operator_signer()
    assert str(info.value) == OPERATOR_UNKNOWN.format(
        address=settings.CHAIN_OPERATOR_ADDRESS, chain="volta"
    )


def test_operators_are_chosen_per_chain(tmp_path):
    volta, ewc = make_key(), make_key()
    operator_import_key(path=hex_file(tmp_path, volta, "v.key"))
    operator_import_key(path=hex_file(tmp_path, ewc, "e.key"), chain="ewc")
    assert operator_signer().address == volta.address
    assert operator_signer(chain="ewc").address == ewc.address
    with override_settings(CHAIN_ID=246):
        assert operator_account_for().address == ewc.address
    # A chain with no DID name: its operators are keyed by the id.
    with (
        override_settings(CHAIN_ID=31337),
        pytest.raises(OperatorNotConfigured, match="'31337'"),
    ):
        operator_signer()
    with pytest.raises(ValueError, match="chain must be"):
        operator_generate(chain="Not A Chain")


@pytest.mark.django_db(transaction=True)
def test_operator_signer_inside_an_event_loop(tmp_path):
    """The listener builds its integrations inside the loop, where the ORM refuses."""
    key = make_key()
    operator_import_key(path=hex_file(tmp_path, key))

    async def lookup() -> str:
        return operator_signer().address

    assert asyncio.run(lookup()) == key.address

    OperatorAccount.objects.all().delete()

    async def missing() -> None:
        operator_signer()

    with pytest.raises(OperatorNotConfigured):
        asyncio.run(missing())


# --- sealing: purpose binding ---------------------------------------------------------


def test_asset_ciphertext_moved_onto_the_operator_row_fails(tmp_path):
    key = make_key()
    operator = operator_import_key(path=hex_file(tmp_path, key))
    # The same key sealed as an asset key: right master key, right address, wrong
    # purpose.
    _, asset_sealed = crypto.seal_private_key(key.hex)
    OperatorAccount.objects.filter(pk=operator.pk).update(
        nonce=asset_sealed.nonce, ciphertext=asset_sealed.ciphertext
    )
    signer = operator_signer()
    with pytest.raises(crypto.KeyDecryptionFailed) as info:
        signer.sign_hash(DIGEST)
    assert str(info.value) == crypto.DECRYPT_FAILED.format(
        address=key.address, key_id="test1"
    )


def test_operator_ciphertext_moved_onto_an_asset_row_fails():
    key = make_key()
    asset = asset_create_from_key(private_key=key.hex)
    _, operator_sealed = crypto.seal_private_key(key.hex, purpose=crypto.OPERATOR_KEY)
    AssetKey.objects.filter(asset=asset).update(
        nonce=operator_sealed.nonce, ciphertext=operator_sealed.ciphertext
    )
    asset.refresh_from_db()
    with pytest.raises(crypto.KeyDecryptionFailed):
        signer_for_asset(asset).sign_message(b"x")


def test_purposes_do_not_open_each_other():
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex, purpose=crypto.OPERATOR_KEY)
    crypto.verify(sealed, address=address, purpose=crypto.OPERATOR_KEY)
    with pytest.raises(crypto.KeyDecryptionFailed):
        crypto.verify(sealed, address=address)
    with pytest.raises(ValueError, match="unknown key purpose"):
        crypto.verify(sealed, address=address, purpose="other")


# --- rotation -------------------------------------------------------------------------


def test_rotation_re_encrypts_operator_keys_with_the_assets(tmp_path):
    asset_key, operator_key = make_key(), make_key()
    asset_create_from_key(private_key=asset_key.hex)
    operator_import_key(path=hex_file(tmp_path, operator_key))
    before = bytes(OperatorAccount.objects.get().ciphertext)
    new_master = ("k2", os.urandom(32))
    with override_settings(
        EVOPS_KEY_ENCRYPTION_KEYS=[new_master, *settings.EVOPS_KEY_ENCRYPTION_KEYS]
    ):
        out, _ = run("rotate_encryption_key", "--no-progress")
    assert "Re-encrypted 2 key(s) under master key 'k2' (1 asset, 1 operator" in out
    operator = OperatorAccount.objects.get()
    assert operator.key_id == "k2"
    assert bytes(operator.ciphertext) != before
    # Only the new master key is needed now.
    with override_settings(EVOPS_KEY_ENCRYPTION_KEYS=[new_master]):
        assert_signs_as(operator_signer(), operator_key.address)


def test_rotation_is_all_or_nothing_across_assets_and_operators(tmp_path):
    asset_key, operator_key = make_key(), make_key()
    asset_create_from_key(private_key=asset_key.hex)
    operator = operator_import_key(path=hex_file(tmp_path, operator_key))
    OperatorAccount.objects.filter(pk=operator.pk).update(
        ciphertext=os.urandom(len(bytes(operator.ciphertext)))
    )
    with (
        override_settings(
            EVOPS_KEY_ENCRYPTION_KEYS=[
                ("k2", os.urandom(32)),
                *settings.EVOPS_KEY_ENCRYPTION_KEYS,
            ]
        ),
        pytest.raises(crypto.KeyCustodyError) as info,
    ):
        asset_rotate_encryption_keys()
    assert f"operator {operator_key.address}" in str(info.value)
    assert "nothing was changed" in str(info.value)
    assert list(AssetKey.objects.values_list("key_id", flat=True)) == ["test1"]
    assert list(OperatorAccount.objects.values_list("key_id", flat=True)) == ["test1"]


def test_rotation_with_only_an_operator(tmp_path):
    operator_import_key(path=hex_file(tmp_path, make_key()))
    with override_settings(
        EVOPS_KEY_ENCRYPTION_KEYS=[
            ("k3", os.urandom(32)),
            *settings.EVOPS_KEY_ENCRYPTION_KEYS,
        ]
    ):
        report = asset_rotate_encryption_keys()
    assert (report.total, report.operators) == (0, 1)
    assert report.by_previous_key == {"test1": 1}


# --- the system check -----------------------------------------------------------------


def test_relay_check_warns_without_an_operator(settings, tmp_path):
    settings.CHAIN_WRITE_MODE = "relay"
    assert check_relay_operator(databases=None) == []  # no database access asked
    [warning] = check_relay_operator(databases=["default"])
    assert warning.id == W001
    assert warning.msg == OPERATOR_NOT_CONFIGURED.format(chain="volta")
    operator_import_key(path=hex_file(tmp_path, make_key()))
    assert check_relay_operator(databases=["default"]) == []
    settings.CHAIN_WRITE_MODE = "asset"
    OperatorAccount.objects.all().delete()
    assert check_relay_operator(databases=["default"]) == []


def test_relay_check_runs_from_manage_py_check(settings):
    settings.CHAIN_WRITE_MODE = "relay"
    out, err = run("check", "--database", "default")
    assert W001 in err + out


def test_relay_check_tolerates_a_missing_table(settings, monkeypatch):
    settings.CHAIN_WRITE_MODE = "relay"
    monkeypatch.setattr(OperatorAccount._meta, "db_table", "assets_not_migrated_yet")
    assert check_relay_operator(databases=["default"]) == []


# --- admin and leaks ------------------------------------------------------------------


def test_operator_admin_is_read_only(admin_client, tmp_path):
    operator = operator_import_key(path=hex_file(tmp_path, make_key()), label="ops")
    changelist = admin_client.get(
        reverse("admin:assets_operatoraccount_changelist")
    ).content.decode()
    assert operator.address in changelist
    assert "sealed with test1" in changelist
    page = admin_client.get(
        reverse("admin:assets_operatoraccount_change", args=[operator.pk])
    )
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert (
        admin_client.get(reverse("admin:assets_operatoraccount_add")).status_code == 403
    )
    delete = reverse("admin:assets_operatoraccount_delete", args=[operator.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert OperatorAccount.objects.filter(pk=operator.pk).exists()


def test_operator_key_never_leaks(tmp_path, admin_client, caplog):
    caplog.set_level("DEBUG")
    texts: dict[str, str] = {}
    imported, keystore_key, wrong = make_key(), make_key(), make_key()
    password_file = tmp_path / "password"
    password_file.write_text(KEYSTORE_PASSWORD)

    out, err = run("generate_operator_key", "--label", "gen")
    generated = OperatorAccount.objects.get(label="gen")
    register_generated(generated)
    texts["generate"] = out + err
    out, err = run("import_operator_key", str(hex_file(tmp_path, imported)))
    texts["import hex"] = out + err
    keystore = write_keystore(tmp_path / "UTC--ks", keystore_key)
    out, err = run(
        "import_operator_key", str(keystore), "--password-file", str(password_file)
    )
    texts["import keystore"] = out + err

    errors: list[BaseException] = []
    bad_password = tmp_path / "bad"
    bad_password.write_text("nope")
    wrong_keystore = write_keystore(tmp_path / "UTC--wrong", wrong)
    truncated = tmp_path / "trunc.key"
    truncated.write_text(wrong.hex[:-3])
    for args in (
        (str(wrong_keystore), "--password-file", str(bad_password)),
        (str(hex_file(tmp_path, imported)),),  # already stored
        (str(truncated),),
    ):
        with pytest.raises(CommandError) as caught:
            run("import_operator_key", *args)
        errors.append(caught.value)
    with pytest.raises(OperatorNotConfigured) as caught_none:
        operator_signer(chain="ewc")
    errors.append(caught_none.value)
    operator = OperatorAccount.objects.get(address=imported.address)
    _, asset_sealed = crypto.seal_private_key(imported.hex)
    moved = EncryptedKeySigner(
        address=imported.address,
        sealed=dataclasses.replace(asset_sealed, key_id="test1"),
        purpose=crypto.OPERATOR_KEY,
    )
    with pytest.raises(crypto.KeyDecryptionFailed) as caught_moved:
        moved.sign_hash(DIGEST)
    errors.append(caught_moved.value)
    texts["exceptions"] = "\n".join(
        f"{e!s} {e!r} {e.__cause__!r} {e.__context__!r}" for e in errors
    )

    with override_settings(CHAIN_OPERATOR_ADDRESS=imported.address):
        signer = operator_signer()
    signer.sign_transaction(
        {"to": imported.address, "gas": 21_000, "gasPrice": 1, "nonce": 0, "chainId": 1}
    )
    texts["signer"] = repr(signer) + str(signer) + repr(operator) + str(operator)

    with override_settings(
        EVOPS_KEY_ENCRYPTION_KEYS=[
            ("k2", os.urandom(32)),
            *settings.EVOPS_KEY_ENCRYPTION_KEYS,
        ]
    ):
        out, err = run("rotate_encryption_key", "--no-progress")
        texts["rotation"] = out + err
        changelist = reverse("admin:assets_operatoraccount_changelist")
        texts["admin list"] = admin_client.get(changelist).content.decode()
        texts["admin search"] = admin_client.get(
            changelist, {"q": imported.hex[2:10]}
        ).content.decode()
        for pk in OperatorAccount.objects.values_list("pk", flat=True):
            page = admin_client.get(
                reverse("admin:assets_operatoraccount_change", args=[pk])
            )
            assert page.status_code == 200
            texts[f"admin change {pk}"] = page.content.decode()
            ciphertext = bytes(OperatorAccount.objects.get(pk=pk).ciphertext)
            assert ciphertext.hex() not in texts[f"admin change {pk}"]

    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM assets_operatoraccount t")
        rows = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT nonce, ciphertext FROM assets_operatoraccount")
        raw = b"".join(bytes(a) + bytes(b) for a, b in cursor.fetchall())
    assert len(rows) == 3
    texts["db"] = "\n".join(rows)
    for key in (imported, keystore_key):
        assert bytes.fromhex(key.hex[2:]) not in raw
    texts["logs"] = caplog.text
    assert "operator account stored" in caplog.text  # the logs were really scanned
    for where, text in texts.items():
        LEAK_GUARD.assert_clean(text, where)
    assert json.dumps(texts)  # everything collected is text
    assert LEAK_GUARD.find(texts["import hex"] + imported.hex)  # the guard sees keys
