from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from assets import crypto, signers
from assets.models import Asset, AssetKey
from assets.services import asset_create_from_key
from assets.signers import EncryptedKeySigner, register_backend, signer_for_asset
from assets.tests.conftest import LEAK_GUARD, make_key
from evops.protocol import jwt
from evops.protocol.keys import LocalKeySigner
from evops.protocol.signer import Signer

pytestmark = pytest.mark.django_db


def test_signer_for_asset_is_an_encrypted_key_signer():
    key = make_key()
    asset = asset_create_from_key(private_key=key.hex)
    signer = signer_for_asset(asset)
    assert isinstance(signer, EncryptedKeySigner)
    assert isinstance(signer, Signer)
    assert signer.address == key.address == asset.address


def test_signatures_equal_the_in_memory_signer_byte_for_byte():
    # RFC 6979 nonces are deterministic, so both backends must agree exactly.
    key = make_key()
    signer = signer_for_asset(asset_create_from_key(private_key=key.hex))
    reference = LocalKeySigner(key.hex)
    digest = os.urandom(32)
    assert signer.sign_message(b"claim") == reference.sign_message(b"claim")
    assert signer.sign_hash(digest) == reference.sign_hash(digest)
    tx = {"to": key.address, "value": 0, "gas": 21000, "gasPrice": 1, "nonce": 3}
    tx["chainId"] = 73799
    assert signer.sign_transaction(tx) == reference.sign_transaction(tx)
    assert (
        Account.recover_message(
            encode_defunct(b"claim"), signature=signer.sign_message(b"claim")
        )
        == key.address
    )


def test_identity_token_vector_is_reproduced(vectors):
    asset_vector = vectors["asset"]
    asset = asset_create_from_key(private_key=asset_vector["private_key"])
    assert asset.did == asset_vector["did"]
    token = jwt.identity_token(
        signer_for_asset(asset),
        did=asset.did,
        block_number=vectors["identity_token"]["block_number"],
    )
    assert token == vectors["identity_token"]["token"]


def test_repr_shows_no_secret():
    key = make_key()
    signer = signer_for_asset(asset_create_from_key(private_key=key.hex))
    text = repr(signer) + str(signer)
    LEAK_GUARD.assert_clean(text, "signer repr")
    row = AssetKey.objects.get(asset__address=key.address)
    assert bytes(row.ciphertext).hex() not in text
    assert bytes(row.nonce).hex() not in text
    assert key.address in text and "test1" in text
    assert bytes(row.ciphertext).hex() not in repr(row)


def test_each_signature_decrypts_again_so_a_tampered_row_stops_signing():
    key = make_key()
    asset = asset_create_from_key(private_key=key.hex)
    AssetKey.objects.filter(pk=asset.pk).update(ciphertext=os.urandom(48))
    signer = signer_for_asset(Asset.objects.get(pk=asset.pk))
    with pytest.raises(crypto.KeyDecryptionFailed):
        signer.sign_message(b"x")


def test_an_asset_without_a_key_gives_a_clear_error():
    key = make_key()
    asset = asset_create_from_key(private_key=key.hex)
    AssetKey.objects.filter(pk=asset.pk).delete()
    with pytest.raises(crypto.KeyCustodyError, match="has no stored key"):
        signer_for_asset(Asset.objects.get(pk=asset.pk))


def test_an_unknown_backend_gives_a_clear_error():
    asset = asset_create_from_key(private_key=make_key().hex)
    asset.signer_backend = "vault"
    with pytest.raises(crypto.KeyCustodyError, match="'vault'"):
        signer_for_asset(asset)


def test_a_remote_backend_can_be_registered(monkeypatch):
    key = make_key()
    asset = asset_create_from_key(private_key=key.hex)
    monkeypatch.setattr(signers, "_backends", dict(signers._backends))
    remote = LocalKeySigner(key.hex)  # stands in for a KMS client
    register_backend("remote-test", lambda _asset: remote)
    asset.signer_backend = "remote-test"
    assert signer_for_asset(asset) is remote
