from __future__ import annotations

import base64
import dataclasses
import os
import re

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.test import override_settings
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.datatypes import Signature
from eth_utils.address import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from assets import crypto
from assets.tests.conftest import (
    KEYSTORE_PASSWORD,
    LEAK_GUARD,
    keystore_document,
    make_key,
)

OTHER_MASTER = os.urandom(32)


def _recover_hash(digest: bytes, signature: bytes) -> str:
    sig = Signature(signature[:64] + bytes([signature[64] - 27]))
    return str(sig.recover_public_key_from_msg_hash(digest).to_checksum_address())


def test_seal_returns_the_address_and_a_ciphertext_without_the_key():
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    assert address == key.address
    assert sealed.key_id == "test1"
    assert sealed.algorithm == crypto.ALGORITHM
    assert len(sealed.nonce) == 12
    LEAK_GUARD.assert_clean(sealed.ciphertext.hex(), "ciphertext")
    assert bytes.fromhex(key.hex[2:]) not in sealed.ciphertext
    assert key.hex[2:] not in repr(sealed)


def test_sealing_accepts_every_spelling_of_a_key():
    key = make_key()
    spellings = [key.hex, key.hex[2:], key.hex.upper().replace("0X", "0x"), key.hex[2:]]
    spellings.append(bytes.fromhex(key.hex[2:]))  # type: ignore[arg-type]
    for spelling in spellings:
        assert crypto.seal_private_key(spelling)[0] == key.address


def test_each_seal_uses_a_fresh_nonce():
    key = make_key()
    first = crypto.seal_private_key(key.hex)[1]
    second = crypto.seal_private_key(key.hex)[1]
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0x",
        "0x1234",
        "zz" * 32,
        "0x" + "00" * 32,  # zero is not a key
        "0x" + "ff" * 32,  # above the curve order
        "0x" + "ab" * 33,
        "12" * 31 + "1",
    ],
)
def test_invalid_keys_are_refused_without_echoing_them(text: str):
    with pytest.raises(crypto.InvalidPrivateKey) as info:
        crypto.seal_private_key(text)
    assert str(info.value) == crypto.INVALID_KEY
    if text.removeprefix("0x"):
        assert text.removeprefix("0x") not in str(info.value)


def test_sign_message_is_eip191_and_recovers_to_the_address():
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    signature = crypto.sign_message(sealed, address=address, message=b"hello evops")
    assert len(signature) == 65
    assert signature[64] in (27, 28)
    recovered = Account.recover_message(
        encode_defunct(b"hello evops"), signature=signature
    )
    assert recovered == address


def test_sign_hash_signs_the_raw_digest():
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    digest = os.urandom(32)
    signature = crypto.sign_hash(sealed, address=address, digest=digest)
    assert signature[64] in (27, 28)
    assert _recover_hash(digest, signature) == address
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.sign_hash(sealed, address=address, digest=b"short")


def test_sign_transaction_gives_raw_bytes_that_recover_to_the_address():
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    tx = {
        "to": address,
        "value": 1,
        "gas": 21000,
        "gasPrice": 10**9,
        "nonce": 0,
        "chainId": 73799,
    }
    raw = crypto.sign_transaction(sealed, address=address, transaction=tx)
    assert Account.recover_transaction(raw) == address


def test_seal_new_key_makes_distinct_usable_keys():
    first_address, first = crypto.seal_new_key()
    second_address, second = crypto.seal_new_key()
    assert first_address != second_address
    crypto.verify(first, address=first_address)
    crypto.verify(second, address=second_address)


def test_missing_master_key_names_the_setting_and_the_key_id():
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    with (
        override_settings(EVOPS_KEY_ENCRYPTION_KEYS=[("k9", OTHER_MASTER)]),
        pytest.raises(crypto.MasterKeyMissing) as info,
    ):
        crypto.sign_message(sealed, address=address, message=b"x")
    message = str(info.value)
    assert "EVOPS_KEY_ENCRYPTION_KEYS" in message
    assert "'test1'" in message
    assert message == crypto.MASTER_KEY_MISSING.format(key_id="test1")


def test_wrong_master_key_under_the_same_id_names_the_setting():
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    with (
        override_settings(EVOPS_KEY_ENCRYPTION_KEYS=[("test1", OTHER_MASTER)]),
        pytest.raises(crypto.KeyDecryptionFailed) as info,
    ):
        crypto.verify(sealed, address=address)
    assert "EVOPS_KEY_ENCRYPTION_KEYS" in str(info.value)
    assert "'test1'" in str(info.value)
    LEAK_GUARD.assert_clean(str(info.value), "exception message")


@pytest.mark.parametrize("part", ["ciphertext", "nonce"])
def test_a_tampered_envelope_is_detected(part: str):
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    value = bytearray(getattr(sealed, part))
    value[0] ^= 0x01
    tampered = dataclasses.replace(sealed, **{part: bytes(value)})  # type: ignore[arg-type]
    with pytest.raises(crypto.KeyDecryptionFailed):
        crypto.sign_hash(tampered, address=address, digest=b"\x00" * 32)


def test_a_ciphertext_moved_to_another_asset_fails():
    key, other = make_key(), make_key()
    _, sealed = crypto.seal_private_key(key.hex)
    with pytest.raises(crypto.KeyDecryptionFailed) as info:
        crypto.sign_message(sealed, address=other.address, message=b"x")
    assert other.address in str(info.value)


def _forged(key_hex: str, address: str) -> crypto.SealedKey:
    """`key_hex` sealed for `address` with the master key itself: an envelope that
    authenticates, holding the key of another account."""
    nonce = os.urandom(12)
    ciphertext = AESGCM(dict(settings.EVOPS_KEY_ENCRYPTION_KEYS)["test1"]).encrypt(
        nonce,
        bytes.fromhex(key_hex[2:]),
        b"evops/asset-key/v1|" + address.lower().encode(),
    )
    return crypto.SealedKey("test1", crypto.ALGORITHM, nonce, ciphertext)


def test_a_key_that_derives_another_address_is_refused():
    key, other = make_key(), make_key()
    forged = _forged(key.hex, other.address)
    with pytest.raises(crypto.KeyAddressMismatch) as info:
        crypto.sign_message(forged, address=other.address, message=b"x")
    assert str(info.value) == crypto.ADDRESS_MISMATCH.format(address=other.address)


def test_an_unknown_algorithm_is_refused():
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    with pytest.raises(crypto.KeyCustodyError, match="Unsupported"):
        crypto.verify(dataclasses.replace(sealed, algorithm="rot13"), address=address)


def test_reseal_moves_to_the_first_key_and_keeps_the_old_one_readable():
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    rotated_keys = [("k2", OTHER_MASTER), *settings.EVOPS_KEY_ENCRYPTION_KEYS]
    with override_settings(EVOPS_KEY_ENCRYPTION_KEYS=rotated_keys):
        assert crypto.current_key_id() == "k2"
        crypto.verify(sealed, address=address)  # the old key still decrypts
        fresh = crypto.reseal(sealed, address=address)
        assert fresh.key_id == "k2"
        crypto.verify(fresh, address=address)
    with override_settings(EVOPS_KEY_ENCRYPTION_KEYS=[("k2", OTHER_MASTER)]):
        crypto.verify(fresh, address=address)
        with pytest.raises(crypto.MasterKeyMissing):
            crypto.verify(sealed, address=address)


def test_seal_keystore_decrypts_with_eth_account():
    key = make_key()
    document = keystore_document(key)
    address, sealed = crypto.seal_keystore(document, KEYSTORE_PASSWORD)
    assert address == key.address
    crypto.verify(sealed, address=address)


def test_seal_keystore_with_a_wrong_password_or_garbage_fails_cleanly():
    key = make_key()
    document = keystore_document(key)
    with pytest.raises(crypto.KeystoreError) as info:
        crypto.seal_keystore(document, "wrong")
    assert str(info.value) == crypto.KEYSTORE_FAILED
    with pytest.raises(crypto.KeystoreError, match="keystore"):
        crypto.seal_keystore({"version": 3}, KEYSTORE_PASSWORD)
    broken = {**document, "crypto": {**document["crypto"], "kdf": "nope"}}
    with pytest.raises(crypto.KeystoreError):
        crypto.seal_keystore(broken, KEYSTORE_PASSWORD)


def test_eip191_digest_matches_eth_account():
    from eth_account.messages import _hash_eip191_message

    message = os.urandom(32)
    assert crypto.eip191_digest(message) == _hash_eip191_message(
        encode_defunct(message)
    )


def test_a_forged_key_is_refused_even_after_the_address_was_verified():
    key, other = make_key(), make_key()
    address, sealed = crypto.seal_private_key(other.hex)
    crypto.verify(sealed, address=address)  # remembers other's public key
    forged = _forged(key.hex, address)
    with pytest.raises(crypto.KeyAddressMismatch):
        crypto.sign_hash(forged, address=address, digest=b"\x01" * 32)
    crypto.verify(sealed, address=address)


@given(st.binary(min_size=20, max_size=20))
def test_checksum_address_is_eip55(raw):
    assert crypto.checksum_address(raw) == to_checksum_address(raw)


# The HTML report shows each frame's locals as <td>name</td> <td class=code><pre>value.
LOCAL_VAR_ROW = re.compile(r'<td>(\w+)</td>\s*<td class="code"><pre>(.*?)</pre>', re.S)


def _crash_report(rf, sealed: crypto.SealedKey, address: str) -> tuple[str, str]:
    """Django's text and HTML error reports for a crash inside signing.

    Caught here so the report holds only crypto's frames and this one (no test locals).
    """
    import sys

    from django.views.debug import ExceptionReporter

    try:
        crypto.sign_hash(sealed, address=address, digest=b"not 32 bytes")
    except ValueError:
        reporter = ExceptionReporter(rf.get("/admin/"), *sys.exc_info())
        return reporter.get_traceback_text(), reporter.get_traceback_html()
    raise AssertionError("signing a short digest must fail")


@pytest.mark.parametrize("debug", [True, False])
def test_django_error_reports_hide_key_material(rf, settings, debug):
    """A crash inside signing, reported by Django (DEBUG page, error mail), shows stars.

    The report lists every frame's locals; the frames that hold the plaintext key or
    the master key are marked `sensitive_variables`.
    """
    from django.utils.html import escape
    from django.views.debug import SafeExceptionReporterFilter

    CLEANSED = SafeExceptionReporterFilter.cleansed_substitute
    settings.DEBUG = debug
    key = make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    text, html = _crash_report(rf, sealed, address)
    assert "_sign" in text  # the frame that held the key is in the report
    shown = dict(LOCAL_VAR_ROW.findall(html))
    # (no failure message: it would print the leaked value)
    assert shown["secret"] == escape(repr(CLEANSED))
    assert shown["digest"] == escape(repr(CLEANSED))
    secret = bytes.fromhex(key.hex[2:])
    for report in (text, html):
        LEAK_GUARD.assert_clean(report, "error report")
        assert secret.hex() not in report
        assert base64.b64encode(secret).decode() not in report


def test_an_envelope_is_derived_once_and_a_forged_one_in_full(monkeypatch):
    key, other = make_key(), make_key()
    address, sealed = crypto.seal_private_key(key.hex)
    crypto._PROVEN_ENVELOPES.clear()
    derived: list[bytes] = []
    real = crypto._public_key

    def counted(secret: bytes) -> bytes:
        derived.append(b"")
        return real(secret)

    monkeypatch.setattr(crypto, "_public_key", counted)
    first = crypto.sign_hash(sealed, address=address, digest=b"\x02" * 32)
    again = crypto.sign_hash(sealed, address=address, digest=b"\x02" * 32)
    assert first == again
    assert len(derived) == 1  # the second use of the same envelope derives nothing
    # Another envelope for the same address (authentic, wrong key) is checked again.
    forged = _forged(other.hex, address)
    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(crypto.KeyAddressMismatch):
            crypto.sign_hash(forged, address=address, digest=b"\x02" * 32)
    assert len(derived) == 3
    # An altered envelope still fails authentication before anything else.
    tampered = dataclasses.replace(
        sealed,
        ciphertext=bytes(sealed.ciphertext)[:-1] + bytes([sealed.ciphertext[-1] ^ 1]),
    )
    with pytest.raises(crypto.KeyDecryptionFailed):
        crypto.sign_hash(tampered, address=address, digest=b"\x02" * 32)
