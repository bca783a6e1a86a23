from __future__ import annotations

import threading

from eth_hash.auto import keccak as eth_hash_keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from evops.protocol import _crypto


def test_direct_keccak_is_in_use_and_known_answer():
    assert _crypto._keccak is not eth_hash_keccak
    assert _crypto.keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_keccak_matches_eth_hash(data):
    assert _crypto.keccak256(data) == eth_hash_keccak(data)


def test_keccak_is_thread_safe():
    inputs = [bytes([i]) * (i * 7) for i in range(64)]
    expected = [eth_hash_keccak(x) for x in inputs]
    mismatches: list[int] = []

    def work() -> None:
        for _ in range(50):
            for index, data in enumerate(inputs):
                if _crypto.keccak256(data) != expected[index]:
                    mismatches.append(index)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


def test_keccak256_is_public_and_the_private_alias_still_works():
    import evops.protocol
    from evops.protocol import hashing

    assert evops.protocol.keccak256 is hashing.keccak256 is _crypto.keccak256
    assert "keccak256" in evops.protocol.__all__
    assert hashing.personal_message_hash is _crypto.personal_message_hash
