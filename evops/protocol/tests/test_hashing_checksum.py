"""The protocol core's EIP-55 rule (`evops.protocol.hashing.checksum_address`)."""

from __future__ import annotations

import pytest
from eth_utils.address import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from evops.protocol.dids import DID, normalize_address
from evops.protocol.hashing import checksum_address


@given(st.binary(min_size=20, max_size=20))
def test_checksum_address_is_eth_utils_eip55(raw):
    assert checksum_address(raw) == to_checksum_address(raw)


@given(st.binary(min_size=20, max_size=20))
def test_a_did_is_checksummed_as_eth_utils_does(raw):
    lowered = "0x" + raw.hex()
    assert normalize_address(lowered) == to_checksum_address(lowered)
    assert DID.parse(
        f"did:ethr:volta:{lowered.upper().replace('0X', '0x')}"
    ).address == (to_checksum_address(lowered))


@pytest.mark.parametrize("size", [0, 19, 21, 32])
def test_only_20_bytes_are_an_address(size):
    with pytest.raises(ValueError):
        checksum_address(b"\x01" * size)
