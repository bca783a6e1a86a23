"""Small, fast primitives shared by the protocol modules (keccak, recovery).

Hot paths (token verification in reconciliation loops) avoid eth-utils' input
validation and compare raw 20-byte addresses; EIP-55 strings are built only for
results handed back to callers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from coincurve import PublicKey
from eth_hash.auto import keccak as _eth_hash_keccak

from evops.protocol.errors import SignatureError

ERR_SIGNATURE_LENGTH = "signature must be 65 bytes r || s || v"
ERR_SIGNATURE_V = "signature v must be 27 or 28"
ERR_RECOVERY = "signature does not recover to a public key"

_PERSONAL_PREFIX = b"\x19Ethereum Signed Message:\n"


def _direct_keccak() -> Callable[[bytes], bytes] | None:
    """keccak-256 straight through pycryptodome's C library, if its cffi API is there.

    eth-hash's pycryptodome backend builds a Python hash object per call (~20 us);
    calling the same C functions with one reusable state per thread costs ~5 us,
    which is most of the difference between signing a token and a raw signature.
    Returns None (use eth-hash) if the private API is missing or disagrees with
    eth-hash on a known input.
    """
    try:
        from Crypto.Hash import keccak as pycryptodome_keccak
        from Crypto.Util import _raw_api

        lib: Any = getattr(pycryptodome_keccak, "_raw_keccak_lib")  # noqa: B009
        ffi: Any = getattr(_raw_api, "ffi")  # noqa: B009
    except (ImportError, AttributeError):
        return None

    local = threading.local()

    def state() -> tuple[Any, Any]:
        held = getattr(local, "state", None)
        if held is None:
            pointer = ffi.new("void **")
            if lib.keccak_init(pointer, 64, 24):  # capacity 512 bits, 24 rounds
                raise MemoryError("keccak_init failed")
            held = (ffi.gc(pointer[0], lib.keccak_destroy), ffi.new("uint8_t[32]"))
            local.state = held
        return held

    def keccak(data: bytes) -> bytes:
        handle, out = state()
        lib.keccak_reset(handle)
        if lib.keccak_absorb(handle, bytes(data), len(data)):
            raise ValueError("keccak_absorb failed")
        if lib.keccak_digest(handle, out, 32, 0x01):
            raise ValueError("keccak_digest failed")
        return bytes(ffi.buffer(out, 32))

    try:
        probe = b"evops keccak self-test" * 9
        if keccak(probe) != _eth_hash_keccak(probe) or keccak(b"") != (
            _eth_hash_keccak(b"")
        ):
            return None
    except Exception:
        return None
    return keccak


_keccak: Callable[[bytes], bytes] = _direct_keccak() or _eth_hash_keccak


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 (not NIST SHA3-256).

    Mirrors ethers' `keccak256` / Solidity's `keccak256`: the JWT digest, the
    ERC-1056 signed-write digest and addresses all go through it. Public name:
    `evops.protocol.hashing.keccak256`.
    """
    return _keccak(data)


def personal_message_hash(message: bytes) -> bytes:
    """EIP-191 version 0x45 hash, as ethers' `hashMessage` / web3 `personal_sign`."""
    return keccak256(_PERSONAL_PREFIX + str(len(message)).encode("ascii") + message)


def public_key_to_address_bytes(public_key: PublicKey) -> bytes:
    """The 20-byte account of a secp256k1 public key.

    Mirrors ethers' `computeAddress`: the last 20 bytes of keccak-256 of the
    uncompressed key without its 0x04 prefix.
    """
    uncompressed = public_key.format(compressed=False)
    return keccak256(uncompressed[1:])[-20:]


def checksum(address20: bytes) -> str:
    """EIP-55 string of a raw 20-byte address (as ethers' `getAddress` writes it).

    The rule itself: eth-utils' `to_checksum_address` validates and converts its
    input several times (~20 us), and every DID parsed, token recovered and log
    read checksums an address. The tests pin it to eth-utils.
    """
    if len(address20) != 20:
        raise ValueError("an address is 20 bytes")
    lowered = bytes(address20).hex()
    nibbles = keccak256(lowered.encode("ascii")).hex()
    return "0x" + "".join(
        char.upper() if nibble in "89abcdef" else char
        for char, nibble in zip(lowered, nibbles[:40], strict=True)
    )


def recover_address_bytes(digest: bytes, signature: bytes) -> bytes:
    """Recover the 20-byte signer of a 32-byte digest from a 65-byte r||s||v signature.

    Mirrors ethers 5 `recoverAddress`: v in {27, 28}; high-s signatures are accepted
    as the peers accept them.
    """
    if len(signature) != 65:
        raise SignatureError(ERR_SIGNATURE_LENGTH)
    v = signature[64]
    if v not in (27, 28):
        raise SignatureError(ERR_SIGNATURE_V)
    try:
        public_key = PublicKey.from_signature_and_message(
            signature[:64] + bytes((v - 27,)), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises ValueError/Exception subclasses
        raise SignatureError(ERR_RECOVERY) from exc
    return public_key_to_address_bytes(public_key)
