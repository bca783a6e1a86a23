"""Ethereum signatures from signers that only return a plain ECDSA `r || s`.

A PKCS#11 token (`CKM_ECDSA`) or any other remote signer signs a 32-byte digest
and returns the 64 bytes `r || s`, with no recovery id and with `s` in either half
of the curve order. Ethereum wants 65 bytes `r || s || v`, `s` in the lower half
(EIP-2; ethers and the registry's `ecrecover` accept only that form everywhere it
matters), and `v` = 27 + the recovery id. The recovery id is found by recovering
the public key from the signature and comparing it with the signer's stored public
key: a token never tells us, and a wrong guess would sign as a stranger.

Transactions: the two shapes `evops.integrations.chain` sends (EIP-1559 type 2, and
legacy with EIP-155 when the chain has no base fee) are encoded here with RLP
(`encode_signed_transaction`, every signer's path): eth-account's typed-transaction
machinery cost about 1.5 ms of CPU per transaction, ninety raw signatures. Any other
shape is built and encoded by eth-account exactly as for a local key; only the hash
signature comes from the digest signer (`sign_transaction_with`). The tests pin both
to eth-account's bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import rlp  # type: ignore[import-untyped]
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT
from eth_utils.address import to_checksum_address

from evops.protocol._crypto import keccak256
from evops.protocol.errors import SignatureError

# secp256k1 group order.
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_ORDER = CURVE_ORDER // 2

ERR_RAW_LENGTH = "an ECDSA signature from the signer must be 64 bytes r || s"
ERR_RAW_RANGE = "the signer returned r or s outside 1 .. n-1"
ERR_DIGEST = "the digest must be 32 bytes"
ERR_PUBLIC_KEY = "the stored public key must be 64 bytes x || y"
ERR_NO_RECOVERY = (
    "the signature does not recover to the stored public key: the signer used "
    "another key than the one recorded for this account"
)

SignDigest = Callable[[bytes], bytes]


def _recover(compact: bytes, recovery_id: int, digest: bytes) -> bytes | None:
    """The uncompressed public key (65 bytes) a signature recovers to, if any.

    Straight through libsecp256k1 (as `assets.crypto` signs): coincurve's
    `PublicKey.from_signature_and_message` costs about twice as much, and every
    token signature needs one or two recoveries.
    """
    context = GLOBAL_CONTEXT.ctx
    signature = ffi.new("secp256k1_ecdsa_recoverable_signature *")
    if not lib.secp256k1_ecdsa_recoverable_signature_parse_compact(
        context, signature, compact, recovery_id
    ):
        return None
    public = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ecdsa_recover(context, public, signature, digest):
        return None
    out = ffi.new("unsigned char[65]")
    size = ffi.new("size_t *", 65)
    lib.secp256k1_ec_pubkey_serialize(
        context, out, size, public, lib.SECP256K1_EC_UNCOMPRESSED
    )
    return bytes(ffi.buffer(out, 65))


def low_s(r: int, s: int) -> tuple[int, int]:
    """(r, s) with s in the lower half of the order (EIP-2): s and n - s both verify."""
    if s > _HALF_ORDER:
        s = CURVE_ORDER - s
    return r, s


def to_ethereum_signature(raw: bytes, digest: bytes, public_key: bytes) -> bytes:
    """65 bytes r || s || v (v in {27, 28}) from a raw `r || s` over `digest`.

    `public_key` is the signer's uncompressed public key without the 0x04 prefix
    (64 bytes x || y). Raises `SignatureError` if the signature is malformed or
    recovers to no key but that one, so a token holding the wrong key never
    produces a signature that is sent anywhere.
    """
    if len(raw) != 64:
        raise SignatureError(ERR_RAW_LENGTH)
    if len(digest) != 32:
        raise SignatureError(ERR_DIGEST)
    if len(public_key) != 64:
        raise SignatureError(ERR_PUBLIC_KEY)
    r = int.from_bytes(raw[:32], "big")
    s = int.from_bytes(raw[32:], "big")
    if not (0 < r < CURVE_ORDER and 0 < s < CURVE_ORDER):
        raise SignatureError(ERR_RAW_RANGE)
    r, s = low_s(r, s)
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    wanted = b"\x04" + bytes(public_key)
    for recovery_id in (0, 1):
        if _recover(compact, recovery_id, bytes(digest)) == wanted:
            return compact + bytes((27 + recovery_id,))
    raise SignatureError(ERR_NO_RECOVERY)


class _Signature:
    """What eth-account's signing helpers read from a key's `sign_msg_hash`."""

    __slots__ = ("vrs",)

    def __init__(self, signature: bytes) -> None:
        self.vrs = (
            signature[64] - 27,
            int.from_bytes(signature[:32], "big"),
            int.from_bytes(signature[32:64], "big"),
        )


class _DigestKey:
    """Duck-types the part of eth-keys' `PrivateKey` eth-account signs with."""

    __slots__ = ("_sign",)

    def __init__(self, sign_digest: SignDigest) -> None:
        self._sign = sign_digest

    def sign_msg_hash(self, message_hash: bytes) -> _Signature:
        return _Signature(self._sign(bytes(message_hash)))


_COMMON = frozenset({"chainId", "nonce", "to", "value", "data", "gas"})
_TYPE2 = _COMMON | {"type", "maxFeePerGas", "maxPriorityFeePerGas"}
_LEGACY = _COMMON | {"gasPrice"}


def encode_signed_transaction(
    sign_digest: SignDigest, transaction: Mapping[str, Any]
) -> bytes | None:
    """The raw signed bytes of a type-2 or EIP-155 legacy transaction with exactly
    the fields evops sends (integers, `to` an address, `data` hex); None for any
    other shape (eth-account's path then). `sign_digest` as in
    `sign_transaction_with`."""
    fields = dict(transaction)
    fields.pop("from", None)
    keys = set(fields)
    numbers: tuple[str, ...]
    if keys == _TYPE2 and fields["type"] in (2, "0x2"):
        numbers = ("chainId", "nonce", "maxPriorityFeePerGas", "maxFeePerGas", "gas")
    elif keys == _LEGACY:
        numbers = ("nonce", "gasPrice", "gas")
    else:
        return None
    values = [fields[name] for name in (*numbers, "value", "chainId")]
    if not all(type(v) is int and v >= 0 for v in values):
        return None
    data = fields["data"]
    if not _checksummed(fields["to"]) or not (
        isinstance(data, bytes) or (isinstance(data, str) and data.startswith("0x"))
    ):
        return None
    try:
        to = bytes.fromhex(fields["to"][2:])
        data = bytes(data) if isinstance(data, bytes) else bytes.fromhex(data[2:])
    except ValueError:
        return None
    body = [*(fields[name] for name in numbers), to, fields["value"], data]
    if keys == _TYPE2:
        body.append([])  # the access list
        signature = sign_digest(keccak256(b"\x02" + rlp.encode(body)))
        y_parity = signature[64] - 27
        return b"\x02" + bytes(rlp.encode([*body, y_parity, *_r_s(signature)]))
    chain_id = fields["chainId"]
    signature = sign_digest(keccak256(rlp.encode([*body, chain_id, 0, 0])))
    v = signature[64] - 27 + 35 + 2 * chain_id
    return bytes(rlp.encode([*body, v, *_r_s(signature)]))


def _r_s(signature: bytes) -> tuple[int, int]:
    r, s = signature[:32], signature[32:64]
    return int.from_bytes(r, "big"), int.from_bytes(s, "big")


@functools.lru_cache(maxsize=1024)
def _checksummed(address: Any) -> bool:
    """A 20-byte address in its checksummed form (eth-account refuses others)."""
    try:
        return address == to_checksum_address(address) and len(address) == 42
    except (TypeError, ValueError):
        return False


def sign_transaction_with(
    sign_digest: SignDigest, transaction: Mapping[str, Any]
) -> bytes:
    """Sign a web3-style transaction dict through `sign_digest`; the raw signed bytes.

    `sign_digest(hash32)` returns 65 bytes r || s || v (v in {27, 28}), as every
    `Signer.sign_hash` does. eth-account builds the unsigned transaction, its hash
    and the encoding (legacy with EIP-155 `v`, or typed), as `Account.sign_transaction`
    does for a raw key; the tests pin the two to the same bytes.
    """
    from eth_account._utils.signing import sign_transaction_dict

    encoded = encode_signed_transaction(sign_digest, transaction)
    if encoded is not None:
        return encoded
    fields = dict(transaction)
    fields.pop("from", None)
    _v, _r, _s, signed = sign_transaction_dict(
        _DigestKey(sign_digest),  # type: ignore[arg-type]
        fields,
    )
    return bytes(signed)
