from __future__ import annotations

import pickle

import pytest
from coincurve import PublicKey
from eth_account import Account
from eth_account.messages import encode_defunct

from evops.protocol import keys
from evops.protocol.errors import EncodingError
from evops.protocol.keys import LocalKeySigner, private_key_to_address
from evops.protocol.signer import Signer
from evops.protocol.tests.vectors import ASSET, ISSUER

KEY_HEX = ASSET["private_key"]


def test_address_from_vector_keys():
    assert private_key_to_address(KEY_HEX) == ASSET["address"]
    assert (
        private_key_to_address(bytes.fromhex(ISSUER["private_key"][2:]))
        == (ISSUER["address"])
    )
    assert LocalKeySigner(KEY_HEX[2:]).address == ASSET["address"]


def test_is_a_signer():
    assert isinstance(LocalKeySigner(KEY_HEX), Signer)


def test_sign_message_matches_eth_account_personal_sign():
    signer = LocalKeySigner(KEY_HEX)
    message = b"\x01" * 32
    expected = Account.sign_message(encode_defunct(primitive=message), KEY_HEX)
    assert signer.sign_message(message) == bytes(expected.signature)
    assert signer.sign_message(message)[64] in (27, 28)


def test_sign_hash_is_a_raw_signature():
    signer = LocalKeySigner(KEY_HEX)
    digest = bytes(range(32))
    signature = signer.sign_hash(digest)
    recovered = PublicKey.from_signature_and_message(
        signature[:64] + bytes((signature[64] - 27,)), digest, hasher=None
    )
    assert recovered == LocalKeySigner(KEY_HEX)._key.public_key
    with pytest.raises(EncodingError, match=keys.ERR_DIGEST):
        signer.sign_hash(b"short")


def test_sign_transaction_matches_eth_account():
    tx = {
        "to": ISSUER["address"],
        "value": 1,
        "gas": 21000,
        "maxFeePerGas": 10**9,
        "maxPriorityFeePerGas": 10**8,
        "nonce": 0,
        "chainId": 73799,
        "type": 2,
    }
    raw = LocalKeySigner(KEY_HEX).sign_transaction(tx)
    assert raw == bytes(Account.sign_transaction(tx, KEY_HEX).raw_transaction)
    assert Account.recover_transaction(raw) == ASSET["address"]


def test_generate_gives_distinct_working_keys():
    a, b = LocalKeySigner.generate(), LocalKeySigner.generate()
    assert a.address != b.address
    assert private_key_to_address(a.export_private_key()) == a.address


@pytest.mark.parametrize(
    "bad", ["", "0x1234", "zz" * 32, b"\x00" * 32, b"\xff" * 32, b"\x01" * 31, 42]
)
def test_bad_keys_are_rejected_without_echoing_them(bad):
    with pytest.raises(EncodingError) as info:
        LocalKeySigner(bad)
    assert str(info.value) == keys.ERR_KEY
    assert info.value.__cause__ is None


def test_key_never_shown():
    signer = LocalKeySigner(KEY_HEX)
    secret_hex = KEY_HEX[2:].lower()
    for text in (repr(signer), str(signer), f"{signer}", f"{signer!r}"):
        assert secret_hex not in text.lower()
        assert ASSET["address"] in text
    assert not hasattr(signer, "__dict__")
    with pytest.raises(TypeError):
        pickle.dumps(signer)
