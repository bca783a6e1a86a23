"""The transactions evops sends, encoded without eth-account: the same bytes."""

from __future__ import annotations

import random
from typing import Any

import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address

from evops.protocol.ethsig import encode_signed_transaction, sign_transaction_with
from evops.protocol.keys import LocalKeySigner


def _transaction(seed: int) -> dict[str, Any]:
    pick = random.Random(seed).choice
    fields: dict[str, Any] = {
        "chainId": pick([1, 246, 73799, 31337, 2**40]),
        "nonce": pick([0, 1, 127, 128, 255, 256, 2**32]),
        "to": to_checksum_address(random.Random(seed).randbytes(20)),
        "value": pick([0, 1, 10**18]),
        "data": "0x" + random.Random(seed).randbytes(pick([0, 1, 55, 56, 300])).hex(),
        "gas": pick([0, 21000, 123456]),
    }
    if seed % 2:
        return {
            **fields,
            "type": 2,
            "maxFeePerGas": pick([0, 10**9, 2 * 10**11]),
            "maxPriorityFeePerGas": pick([0, 1, 10**9]),
        }
    return {**fields, "gasPrice": pick([0, 1, 10**9])}


@pytest.mark.parametrize("seed", range(40))
def test_evops_transactions_encode_as_eth_account_does(seed):
    signer = LocalKeySigner.generate()
    transaction = _transaction(seed)
    expected = bytes(
        Account.sign_transaction(
            dict(transaction), signer.export_private_key()
        ).raw_transaction
    )
    assert encode_signed_transaction(signer.sign_hash, transaction) == expected
    assert signer.sign_transaction(transaction) == expected
    assert sign_transaction_with(signer.sign_hash, transaction) == expected


@pytest.mark.parametrize(
    "change",
    [
        {"to": "0x" + "ab" * 20},  # not checksummed: eth-account refuses it
        {"accessList": []},
        {"value": True},
        {"data": "abcd"},
        {"type": 1},
    ],
)
def test_any_other_shape_is_left_to_eth_account(change):
    signer = LocalKeySigner.generate()
    transaction = {**_transaction(1), **change}
    assert encode_signed_transaction(signer.sign_hash, transaction) is None
