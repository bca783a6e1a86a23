"""The PKCS#11 signer backend against a real SoftHSM2 token (fresh per test session).

Covers: keys made in the token (sensitive, non-extractable, unreadable through the
binding), Ethereum signatures from `CKM_ECDSA` (low s, recovery id), transactions,
the all-or-nothing move of sealed keys into the token, a refused PIN and a missing
token as transient errors that never show the PIN, concurrency through the pool, and
the signer's health.
"""

from __future__ import annotations

import io
import logging
import os
import threading

import pytest
from django.core.management import CommandError, call_command
from eth_account import Account
from eth_account.messages import encode_defunct

from assets import pkcs11
from assets.models import Asset, AssetKey, SignerBackend
from assets.services import asset_generate
from assets.signers import signer_for_asset, signer_health
from evops.protocol import ethsig
from evops.protocol._crypto import recover_address_bytes
from evops.protocol.errors import SignatureError
from evops.protocol.keys import LocalKeySigner

pytestmark = pytest.mark.django_db

_HALF = ethsig.CURVE_ORDER // 2


def _recovers(digest: bytes, signature: bytes, address: str) -> bool:
    return "0x" + recover_address_bytes(digest, signature).hex() == address.lower()


def _private_keys(label: str) -> set[bytes]:
    """CKA_IDs of the private keys in the token (through a pooled session)."""
    import pkcs11 as binding

    pool = pkcs11.pool_for(label)
    with pool.session() as held, pkcs11.MODULE_LOCK:
        return {
            bytes(key[binding.Attribute.ID])
            for key in held.session.get_objects(
                {binding.Attribute.CLASS: binding.ObjectClass.PRIVATE_KEY}
            )
        }


# --- the conversion (no token) -------------------------------------------------------


def test_high_s_signature_is_normalised_and_recovers():
    signer = LocalKeySigner.generate()
    public = bytes.fromhex(
        Account._keys.PrivateKey(signer.export_private_key()).public_key.to_hex()[2:]
    )
    digest = os.urandom(32)
    good = signer.sign_hash(digest)
    r, s = good[:32], int.from_bytes(good[32:64], "big")
    high = r + (ethsig.CURVE_ORDER - s).to_bytes(32, "big")
    converted = ethsig.to_ethereum_signature(high, digest, public)
    assert converted == good
    assert int.from_bytes(converted[32:64], "big") <= _HALF


@pytest.mark.parametrize(
    ("raw", "digest", "public", "message"),
    [
        (b"\x01" * 63, b"\x00" * 32, b"\x02" * 64, ethsig.ERR_RAW_LENGTH),
        (b"\x01" * 64, b"\x00" * 31, b"\x02" * 64, ethsig.ERR_DIGEST),
        (b"\x01" * 64, b"\x00" * 32, b"\x02" * 65, ethsig.ERR_PUBLIC_KEY),
        (b"\x00" * 64, b"\x00" * 32, b"\x02" * 64, ethsig.ERR_RAW_RANGE),
        (b"\xff" * 64, b"\x00" * 32, b"\x02" * 64, ethsig.ERR_RAW_RANGE),
    ],
)
def test_malformed_raw_signatures_are_refused(raw, digest, public, message):
    with pytest.raises(SignatureError, match=message):
        ethsig.to_ethereum_signature(raw, digest, public)


def test_signature_for_another_public_key_is_refused():
    signer, other = LocalKeySigner.generate(), LocalKeySigner.generate()
    other_public = bytes.fromhex(
        Account._keys.PrivateKey(other.export_private_key()).public_key.to_hex()[2:]
    )
    digest = os.urandom(32)
    with pytest.raises(SignatureError, match="does not recover"):
        ethsig.to_ethereum_signature(
            signer.sign_hash(digest)[:64], digest, other_public
        )


@pytest.mark.parametrize(
    "fees",
    [
        {"gasPrice": 10**9},
        {"type": 2, "maxFeePerGas": 3 * 10**9, "maxPriorityFeePerGas": 10**9},
    ],
)
def test_sign_transaction_with_matches_eth_account(fees):
    signer = LocalKeySigner.generate()
    transaction = {
        "chainId": 73799,
        "nonce": 7,
        "to": "0xC15D5A57A8Eb0e1dCBE5D88B8f9a82017e5Cc4AF",
        "value": 0,
        "data": "0x1234",
        "gas": 90_000,
        **fees,
    }
    assert ethsig.sign_transaction_with(
        signer.sign_hash, transaction
    ) == signer.sign_transaction(transaction)


# --- the token -----------------------------------------------------------------------


def test_generated_keys_live_in_the_token_and_sign_as_the_asset(token_settings):
    before = _private_keys(token_settings.label)
    assets = asset_generate(count=3, backend=SignerBackend.PKCS11)
    after = _private_keys(token_settings.label)
    assert len(after - before) == 3
    for asset in assets:
        asset.refresh_from_db()
        assert asset.signer_backend == SignerBackend.PKCS11
        assert asset.token_label == token_settings.label
        assert bytes.fromhex(asset.token_key_id) in after
        assert not AssetKey.objects.filter(asset=asset).exists()
        signer = signer_for_asset(asset)
        assert isinstance(signer, pkcs11.TokenSigner)
        for _ in range(20):
            digest = os.urandom(32)
            signature = signer.sign_hash(digest)
            assert int.from_bytes(signature[32:64], "big") <= _HALF
            assert _recovers(digest, signature, asset.address)
        message = b"evops login"
        assert Account.recover_message(
            encode_defunct(message),
            signature=signer.sign_message(message),
        ) == (asset.address)


def test_token_transactions_recover_to_the_asset(token_settings):
    (asset,) = asset_generate(count=1, backend=SignerBackend.PKCS11)
    signer = signer_for_asset(asset)
    for fees in (
        {"gasPrice": 2 * 10**9},
        {"type": 2, "maxFeePerGas": 3 * 10**9, "maxPriorityFeePerGas": 10**9},
    ):
        raw = signer.sign_transaction(
            {
                "chainId": 73799,
                "nonce": 0,
                "to": asset.address,
                "value": 0,
                "data": "0x",
                "gas": 21_000,
                **fees,
            }
        )
        assert Account.recover_transaction(raw) == asset.address


def test_token_key_cannot_be_read_out(token_settings):
    import pkcs11 as binding

    (asset,) = asset_generate(count=1, backend=SignerBackend.PKCS11)
    pool = pkcs11.pool_for()
    with pool.session() as held, pkcs11.MODULE_LOCK:
        key = held.session.get_key(
            object_class=binding.ObjectClass.PRIVATE_KEY,
            id=bytes.fromhex(asset.token_key_id),
        )
        assert key[binding.Attribute.SENSITIVE] is True
        assert key[binding.Attribute.EXTRACTABLE] is False
        assert key[binding.Attribute.ALWAYS_SENSITIVE] is True
        assert key[binding.Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(binding.exceptions.AttributeSensitive):
            key[binding.Attribute.VALUE]
        # Nor can it be made readable afterwards.
        with pytest.raises(binding.exceptions.PKCS11Error):
            key[binding.Attribute.EXTRACTABLE] = True
        with pytest.raises(binding.exceptions.PKCS11Error):
            key[binding.Attribute.SENSITIVE] = False
        with pytest.raises(binding.exceptions.AttributeSensitive):
            key[binding.Attribute.VALUE]


def test_generate_command_with_pkcs11_backend(token_settings):
    out = io.StringIO()
    call_command(
        "generate_asset_keys",
        "--count",
        "2",
        "--backend",
        "pkcs11",
        "--no-progress",
        stdout=out,
    )
    assert f"made in PKCS#11 token {token_settings.label!r}" in out.getvalue()
    assert Asset.objects.filter(signer_backend=SignerBackend.PKCS11).count() == 2
    assert AssetKey.objects.count() == 0


def test_move_sealed_keys_into_the_token(token_settings):
    import pkcs11 as binding

    local = asset_generate(count=3, backend=SignerBackend.LOCAL_ENCRYPTED)
    out = io.StringIO()
    call_command("move_asset_keys_to_token", "--no-progress", stdout=out)
    assert "Moved 3 asset key(s)" in out.getvalue()
    assert AssetKey.objects.count() == 0
    pool = pkcs11.pool_for()
    for asset in local:
        asset.refresh_from_db()
        assert asset.signer_backend == SignerBackend.PKCS11
        digest = os.urandom(32)
        assert _recovers(
            digest, signer_for_asset(asset).sign_hash(digest), asset.address
        )
        with pool.session() as held, pkcs11.MODULE_LOCK:
            key = held.session.get_key(
                object_class=binding.ObjectClass.PRIVATE_KEY,
                id=bytes.fromhex(asset.token_key_id),
            )
            with pytest.raises(binding.exceptions.AttributeSensitive):
                key[binding.Attribute.VALUE]
            assert key[binding.Attribute.EXTRACTABLE] is False


def test_move_is_all_or_nothing(token_settings):
    local = asset_generate(count=3, backend=SignerBackend.LOCAL_ENCRYPTED)
    # The last key's envelope is damaged: the first two reach the token, then it fails.
    broken = AssetKey.objects.get(asset=local[-1])
    broken.ciphertext = bytes(broken.ciphertext)[:-1] + b"\x00"
    broken.save()
    before = _private_keys(token_settings.label)
    with pytest.raises(CommandError) as caught:
        call_command("move_asset_keys_to_token", "--no-progress")
    assert "nothing was changed" in str(caught.value)
    assert local[-1].did in str(caught.value)
    assert _private_keys(token_settings.label) == before
    assert AssetKey.objects.count() == 3
    assert not Asset.objects.filter(signer_backend=SignerBackend.PKCS11).exists()
    assert not Asset.objects.exclude(token_key_id="").exists()


def test_move_of_an_unknown_asset_changes_nothing(token_settings):
    asset_generate(count=1, backend=SignerBackend.LOCAL_ENCRYPTED)
    with pytest.raises(CommandError, match="no locally sealed key"):
        call_command(
            "move_asset_keys_to_token",
            "--asset",
            "did:ethr:volta:0xnope",
            "--no-progress",
        )
    assert AssetKey.objects.count() == 1


def test_concurrent_signing_through_the_pool(token_settings):
    assets = asset_generate(count=6, backend=SignerBackend.PKCS11)
    signers = [signer_for_asset(asset) for asset in assets]
    failures: list[str] = []

    def work(offset: int) -> None:
        for round_ in range(40):
            signer = signers[(offset + round_) % len(signers)]
            digest = os.urandom(32)
            try:
                if not _recovers(digest, signer.sign_hash(digest), signer.address):
                    failures.append(f"wrong signer for {signer.address}")
            except Exception as exc:  # collected and asserted below
                failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    pool = pkcs11.pool_for()
    assert 1 <= len(pool._idle) <= pool.size


def test_wrong_pin_is_a_transient_error_that_never_shows_the_pin(
    token_settings, settings, tmp_path, caplog
):
    wrong = "wrong-pin-31337-secret"
    pin_file = tmp_path / "pin"
    pin_file.write_text(wrong)
    # The spare token: nobody in this process is logged in to it.
    settings.PKCS11_TOKEN_LABEL = token_settings.spare_label
    settings.PKCS11_PIN_FILE = str(pin_file)
    signer = pkcs11.TokenSigner(
        address="0x" + "11" * 20,
        label=token_settings.spare_label,
        key_id=b"\x01" * 16,
        public_key=b"\x02" * 64,
    )
    caplog.set_level(logging.DEBUG)
    for _ in range(2):
        with pytest.raises(pkcs11.TokenUnavailable) as caught:
            signer.sign_hash(os.urandom(32))
        assert caught.value.permanent is False
        assert "refused the PIN" in str(caught.value)
        assert "will not try this PIN again" in str(caught.value)
    health = signer_health()
    assert health["ok"] is False and "refused the PIN" in health["error"]
    pool = pkcs11.pool_for()
    texts = [
        str(caught.value),
        repr(caught.value),
        repr(signer),
        repr(pool),
        caplog.text,
        str(health),
        repr(vars(pool)),
    ]
    for text in texts:
        assert wrong not in text
        assert token_settings.pin not in text


def test_missing_token_is_transient_and_visible_in_health(token_settings, settings):
    settings.PKCS11_TOKEN_LABEL = "not-plugged-in"
    health = signer_health()
    assert health == {
        "backend": "pkcs11",
        "ok": False,
        "token": "not-plugged-in",
        "error": pkcs11.TOKEN_UNAVAILABLE.format(
            label="not-plugged-in", reason=pkcs11.TOKEN_MISSING
        ),
    }
    signer = pkcs11.TokenSigner(
        address="0x" + "11" * 20,
        label="not-plugged-in",
        key_id=b"\x01" * 16,
        public_key=b"\x02" * 64,
    )
    with pytest.raises(pkcs11.TokenUnavailable, match="unplugged") as caught:
        signer.sign_message(b"x")
    assert caught.value.permanent is False


def test_healthy_token(token_settings):
    assert signer_health() == {
        "backend": "pkcs11",
        "ok": True,
        "token": token_settings.label,
        "error": "",
    }


def test_key_deleted_from_the_token_is_a_clear_error(token_settings):
    (asset,) = asset_generate(count=1, backend=SignerBackend.PKCS11)
    signer = signer_for_asset(asset)
    pool = pkcs11.pool_for()
    pool.destroy([bytes.fromhex(asset.token_key_id)])
    pool.reset()  # a fresh process: no cached handles
    with pytest.raises(pkcs11.TokenKeyMissing, match=asset.token_key_id):
        signer.sign_hash(os.urandom(32))


def test_row_whose_public_key_is_not_the_assets_is_refused(token_settings):
    (asset,) = asset_generate(count=1, backend=SignerBackend.PKCS11)
    (other,) = asset_generate(count=1, backend=SignerBackend.PKCS11)
    asset.public_key = other.public_key
    from assets.crypto import KeyAddressMismatch

    with pytest.raises(KeyAddressMismatch):
        signer_for_asset(asset)
    # The right public key but another asset's key id: the token signs as the other
    # asset, which the recovery check catches before the signature leaves.
    asset.refresh_from_db()
    asset.token_key_id = other.token_key_id
    with pytest.raises(pkcs11.TokenKeyMismatch):
        signer_for_asset(asset).sign_hash(os.urandom(32))


def test_pkcs11_settings_check(settings):
    from assets.checks import check_pkcs11_configured

    settings.SIGNER_BACKEND = "pkcs11"
    settings.PKCS11_MODULE = ""
    settings.PKCS11_TOKEN_LABEL = ""
    settings.PKCS11_PIN_FILE = ""
    os.environ.pop("PKCS11_PIN", None)
    errors = check_pkcs11_configured()
    assert [error.id for error in errors] == ["assets.E001"]
    assert "PKCS11_MODULE, PKCS11_TOKEN_LABEL, PKCS11_PIN_FILE or PKCS11_PIN" in (
        errors[0].msg
    )
    settings.PKCS11_MODULE = "/nonexistent/libpkcs11.so"
    settings.PKCS11_TOKEN_LABEL = "t"
    settings.PKCS11_PIN_FILE = "/run/secrets/pin"
    assert [e.msg for e in check_pkcs11_configured()] == [
        "PKCS11_MODULE /nonexistent/libpkcs11.so is not a file."
    ]
