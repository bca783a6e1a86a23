"""Small, fast primitives shared by the protocol modules (keccak, recovery).

Hot paths (token verification in reconciliation loops) avoid eth-utils' input
validation and compare raw 20-byte addresses; EIP-55 strings are built only for
results handed back to callers.
"""

from __future__ import annotations

from coincurve import PublicKey
from eth_hash.auto import keccak as _keccak
from eth_utils.address import to_checksum_address

from evops.protocol.errors import SignatureError

ERR_SIGNATURE_LENGTH = "signature must be 65 bytes r || s || v"
ERR_SIGNATURE_V = "signature v must be 27 or 28"
ERR_RECOVERY = "signature does not recover to a public key"

_PERSONAL_PREFIX = b"\x19Ethereum Signed Message:\n"


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 (not NIST SHA3-256)."""
    return _keccak(data)


def personal_message_hash(message: bytes) -> bytes:
    """EIP-191 version 0x45 hash, as ethers' `hashMessage` / web3 `personal_sign`."""
    return keccak256(_PERSONAL_PREFIX + str(len(message)).encode("ascii") + message)


def public_key_to_address_bytes(public_key: PublicKey) -> bytes:
    """The 20-byte account of a secp256k1 public key."""
    uncompressed = public_key.format(compressed=False)
    return keccak256(uncompressed[1:])[-20:]


def checksum(address20: bytes) -> str:
    """EIP-55 string of a raw 20-byte address."""
    return to_checksum_address(address20)


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
