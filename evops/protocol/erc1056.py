"""ERC-1056 ("EthereumDIDRegistry", ethr-did-registry 0.0.3) encoding (protocol.md §7).

Pure encoding and decoding: attribute names, the service value that points at a
published credential, `setAttribute` / `setAttributeSigned` calldata and digest, and
the registry's three events. The chain integration sends the bytes; nothing here does
I/O. Only the ABI fragments evops needs are included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode

from evops.protocol._crypto import checksum, keccak256
from evops.protocol.dids import normalize_address
from evops.protocol.errors import DIDError, EncodingError
from evops.protocol.jwt import compact_json

VALIDITY_FOREVER = 9007199254740990
"""Validity the original clients write: JavaScript's MAX_SAFE_INTEGER - 1 seconds."""

DEFAULT_ATTRIBUTE_NAME = "did/svc/undefined"
HASH_ALG = "SHA256"

ERR_NAME_TOO_LONG = "attribute name must fit in 32 bytes"
ERR_BYTES32 = "value must be exactly 32 bytes"
ERR_SHA256 = "token_sha256 must be 64 lowercase hex digits"
ERR_SERVICE_VALUE = "service value is not a JSON object with a string 'id'"
ERR_UNKNOWN_EVENT = "log is not a registry event"
ERR_LOG_DATA = "log data does not decode as the registry event"
ERR_UINT = "value must be an unsigned 256-bit integer"

_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
_UINT256_MAX = 2**256 - 1

SET_ATTRIBUTE_SIGNATURE = "setAttribute(address,bytes32,bytes,uint256)"
SET_ATTRIBUTE_SIGNED_SIGNATURE = (
    "setAttributeSigned(address,uint8,bytes32,bytes32,bytes32,bytes,uint256)"
)
SET_ATTRIBUTE_SELECTOR = keccak256(SET_ATTRIBUTE_SIGNATURE.encode())[:4]
SET_ATTRIBUTE_SIGNED_SELECTOR = keccak256(SET_ATTRIBUTE_SIGNED_SIGNATURE.encode())[:4]

DID_OWNER_CHANGED = "DIDOwnerChanged"
DID_DELEGATE_CHANGED = "DIDDelegateChanged"
DID_ATTRIBUTE_CHANGED = "DIDAttributeChanged"
_EVENT_SIGNATURES = {
    DID_OWNER_CHANGED: "DIDOwnerChanged(address,address,uint256)",
    DID_DELEGATE_CHANGED: "DIDDelegateChanged(address,bytes32,address,uint256,uint256)",
    DID_ATTRIBUTE_CHANGED: "DIDAttributeChanged(address,bytes32,bytes,uint256,uint256)",
}
REGISTRY_EVENTS: Mapping[str, bytes] = {
    name: keccak256(signature.encode()) for name, signature in _EVENT_SIGNATURES.items()
}
"""Event name -> topic0. topic1 of every registry event is the identity."""

_TOPIC_TO_EVENT = {topic: name for name, topic in REGISTRY_EVENTS.items()}

REGISTRY_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "setAttribute",
        "stateMutability": "nonpayable",
        "inputs": [
            {"name": "identity", "type": "address"},
            {"name": "name", "type": "bytes32"},
            {"name": "value", "type": "bytes"},
            {"name": "validity", "type": "uint256"},
        ],
        "outputs": [],
    },
    {
        "type": "function",
        "name": "setAttributeSigned",
        "stateMutability": "nonpayable",
        "inputs": [
            {"name": "identity", "type": "address"},
            {"name": "sigV", "type": "uint8"},
            {"name": "sigR", "type": "bytes32"},
            {"name": "sigS", "type": "bytes32"},
            {"name": "name", "type": "bytes32"},
            {"name": "value", "type": "bytes"},
            {"name": "validity", "type": "uint256"},
        ],
        "outputs": [],
    },
    *(
        {
            "type": "function",
            "name": view,
            "stateMutability": "view",
            "inputs": [{"name": "", "type": "address"}],
            "outputs": [{"name": "", "type": out}],
        }
        for view, out in (
            ("identityOwner", "address"),
            ("changed", "uint256"),
            ("nonce", "uint256"),
        )
    ),
    {
        "type": "event",
        "name": DID_OWNER_CHANGED,
        "anonymous": False,
        "inputs": [
            {"name": "identity", "type": "address", "indexed": True},
            {"name": "owner", "type": "address", "indexed": False},
            {"name": "previousChange", "type": "uint256", "indexed": False},
        ],
    },
    {
        "type": "event",
        "name": DID_DELEGATE_CHANGED,
        "anonymous": False,
        "inputs": [
            {"name": "identity", "type": "address", "indexed": True},
            {"name": "delegateType", "type": "bytes32", "indexed": False},
            {"name": "delegate", "type": "address", "indexed": False},
            {"name": "validTo", "type": "uint256", "indexed": False},
            {"name": "previousChange", "type": "uint256", "indexed": False},
        ],
    },
    {
        "type": "event",
        "name": DID_ATTRIBUTE_CHANGED,
        "anonymous": False,
        "inputs": [
            {"name": "identity", "type": "address", "indexed": True},
            {"name": "name", "type": "bytes32", "indexed": False},
            {"name": "value", "type": "bytes", "indexed": False},
            {"name": "validTo", "type": "uint256", "indexed": False},
            {"name": "previousChange", "type": "uint256", "indexed": False},
        ],
    },
]
"""Minimal ABI of the 0.0.3 registry: the writes, views and events evops uses."""


def _address20(address: str) -> bytes:
    try:
        return bytes.fromhex(normalize_address(address)[2:])
    except DIDError as exc:
        raise EncodingError(str(exc)) from None


def _bytes32(value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise EncodingError(ERR_BYTES32)
    return bytes(value)


def _uint256(value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodingError(ERR_UINT)
    if not 0 <= value <= _UINT256_MAX:
        raise EncodingError(ERR_UINT)
    return value.to_bytes(32, "big")


def attribute_name(text: str = DEFAULT_ATTRIBUTE_NAME) -> bytes:
    """bytes32 of an attribute name, UTF-8 right-padded with zeros.

    Mirrors ethers' `formatBytes32String` as used by iam-client-lib (which wrote the
    literal `did/svc/undefined`).
    """
    raw = text.encode("utf-8")
    if len(raw) > 32:
        raise EncodingError(ERR_NAME_TOO_LONG)
    return raw.ljust(32, b"\x00")


def attribute_name_text(name: bytes) -> str:
    """Inverse of `attribute_name`: the text up to the first zero byte.

    Mirrors ethr-did-resolver's `bytes32toString`, which reads `did/svc/...` and
    `veriKey` names this way.
    """
    return _bytes32(name).split(b"\x00", 1)[0].decode("utf-8", errors="replace")


def service_value(*, service_id: str, cid: str, token_sha256: str) -> bytes:
    """The attribute value that publishes a credential, as UTF-8 compact JSON.

    Mirrors iam-client-lib's `publishPublicClaim`: key order id, serviceEndpoint,
    hash, hashAlg; hash is lowercase hex of the token's sha256 without 0x.
    """
    if not isinstance(token_sha256, str) or not _SHA256_RE.match(token_sha256):
        raise EncodingError(ERR_SHA256)
    if not isinstance(service_id, str) or not service_id:
        raise EncodingError("service_id must be a non-empty string")
    if not isinstance(cid, str) or not cid:
        raise EncodingError("cid must be a non-empty string")
    return compact_json(
        {
            "id": service_id,
            "serviceEndpoint": cid,
            "hash": token_sha256,
            "hashAlg": HASH_ALG,
        }
    )


def parse_service_value(value: bytes) -> dict[str, Any]:
    """Parse a `did/svc/*` attribute value into a JSON object with a string `id`.

    Mirrors the EW resolver, which `JSON.parse`s service values and keys them by id.
    Raises `EncodingError` for anything else.
    """
    try:
        parsed = json.loads(bytes(value).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError, TypeError):
        raise EncodingError(ERR_SERVICE_VALUE) from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("id"), str):
        raise EncodingError(ERR_SERVICE_VALUE)
    return parsed


def set_attribute_calldata(
    identity: str, name: bytes, value: bytes, validity: int
) -> bytes:
    """Calldata of `setAttribute(identity, name, value, validity)`.

    Mirrors ethers' contract encoding used by the EW `Operator.update`.
    """
    _uint256(validity)
    return SET_ATTRIBUTE_SELECTOR + abi_encode(
        ["address", "bytes32", "bytes", "uint256"],
        ["0x" + _address20(identity).hex(), _bytes32(name), bytes(value), validity],
    )


def set_attribute_signed_digest(
    *,
    registry: str,
    nonce: int,
    identity: str,
    name: bytes,
    value: bytes,
    validity: int,
) -> bytes:
    """The raw hash the identity owner signs for `setAttributeSigned`.

    Mirrors the 0.0.3 registry's `keccak256(byte(0x19), byte(0), this, nonce[...],
    identity, "setAttribute", name, value, validity)` with tight packing. Sign it
    with `Signer.sign_hash` (no EIP-191 prefix).
    """
    packed = b"".join(
        (
            b"\x19\x00",
            _address20(registry),
            _uint256(nonce),
            _address20(identity),
            b"setAttribute",
            _bytes32(name),
            bytes(value),
            _uint256(validity),
        )
    )
    return keccak256(packed)


def split_signature(signature: bytes) -> tuple[int, bytes, bytes]:
    """(v, r, s) of a 65-byte r || s || v signature, for `setAttributeSigned`.

    Mirrors ethers' `splitSignature` (v stays 27/28, as the registry's `ecrecover`
    expects).
    """
    if len(signature) != 65:
        raise EncodingError("signature must be 65 bytes")
    return signature[64], bytes(signature[:32]), bytes(signature[32:64])


def set_attribute_signed_calldata(
    identity: str,
    v: int,
    r: bytes,
    s: bytes,
    name: bytes,
    value: bytes,
    validity: int,
) -> bytes:
    """Calldata of `setAttributeSigned(identity, v, r, s, name, value, validity)`.

    Mirrors ethers' contract encoding of the 0.0.3 ABI, as a relayer sends it
    (anyone may send; the signature proves the owner).
    """
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
        raise EncodingError("v must be a uint8")
    _uint256(validity)
    return SET_ATTRIBUTE_SIGNED_SELECTOR + abi_encode(
        ["address", "uint8", "bytes32", "bytes32", "bytes32", "bytes", "uint256"],
        [
            "0x" + _address20(identity).hex(),
            v,
            _bytes32(r),
            _bytes32(s),
            _bytes32(name),
            bytes(value),
            validity,
        ],
    )


REVOKE_ATTRIBUTE_SIGNATURE = "revokeAttribute(address,bytes32,bytes)"
REVOKE_ATTRIBUTE_SIGNED_SIGNATURE = (
    "revokeAttributeSigned(address,uint8,bytes32,bytes32,bytes32,bytes)"
)
REVOKE_ATTRIBUTE_SELECTOR = keccak256(REVOKE_ATTRIBUTE_SIGNATURE.encode())[:4]
REVOKE_ATTRIBUTE_SIGNED_SELECTOR = keccak256(
    REVOKE_ATTRIBUTE_SIGNED_SIGNATURE.encode()
)[:4]


def revoke_attribute_calldata(identity: str, name: bytes, value: bytes) -> bytes:
    """Calldata of `revokeAttribute(identity, name, value)`.

    The registry emits `DIDAttributeChanged` with `validTo` 0 for exactly these name
    and value bytes; a reader keyed by name and value (ethr-did-resolver) drops only
    that entry, so the bytes must be the ones that were published.
    """
    return REVOKE_ATTRIBUTE_SELECTOR + abi_encode(
        ["address", "bytes32", "bytes"],
        ["0x" + _address20(identity).hex(), _bytes32(name), bytes(value)],
    )


def revoke_attribute_signed_digest(
    *, registry: str, nonce: int, identity: str, name: bytes, value: bytes
) -> bytes:
    """The raw hash the identity owner signs for `revokeAttributeSigned`.

    Mirrors the 0.0.3 registry's `keccak256(byte(0x19), byte(0), this,
    nonce[identity], identity, "revokeAttribute", name, value)` with tight packing
    (the same nonce as `setAttributeSigned`). Sign with `Signer.sign_hash`.
    """
    packed = b"".join(
        (
            b"\x19\x00",
            _address20(registry),
            _uint256(nonce),
            _address20(identity),
            b"revokeAttribute",
            _bytes32(name),
            bytes(value),
        )
    )
    return keccak256(packed)


def revoke_attribute_signed_calldata(
    identity: str, v: int, r: bytes, s: bytes, name: bytes, value: bytes
) -> bytes:
    """Calldata of `revokeAttributeSigned(identity, v, r, s, name, value)`."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
        raise EncodingError("v must be a uint8")
    return REVOKE_ATTRIBUTE_SIGNED_SELECTOR + abi_encode(
        ["address", "uint8", "bytes32", "bytes32", "bytes32", "bytes"],
        [
            "0x" + _address20(identity).hex(),
            v,
            _bytes32(r),
            _bytes32(s),
            _bytes32(name),
            bytes(value),
        ],
    )


@dataclass(frozen=True)
class AttributeChanged:
    """`DIDAttributeChanged(identity, name, value, validTo, previousChange)`."""

    identity: str
    name: bytes
    value: bytes
    valid_to: int
    previous_change: int
    block_number: int
    log_index: int

    @property
    def name_text(self) -> str:
        """The attribute name without its zero padding."""
        return attribute_name_text(self.name)


@dataclass(frozen=True)
class DelegateChanged:
    """`DIDDelegateChanged(identity, delegateType, delegate, validTo, previous)`."""

    identity: str
    delegate_type: bytes
    delegate: str
    valid_to: int
    previous_change: int
    block_number: int
    log_index: int

    @property
    def delegate_type_text(self) -> str:
        """The delegate type (`veriKey`, `sigAuth`) without its zero padding."""
        return attribute_name_text(self.delegate_type)


@dataclass(frozen=True)
class OwnerChanged:
    """`DIDOwnerChanged(identity, owner, previousChange)`."""

    identity: str
    owner: str
    previous_change: int
    block_number: int
    log_index: int


RegistryEvent = AttributeChanged | DelegateChanged | OwnerChanged


def decode_registry_log(
    topics: Sequence[bytes], data: bytes, block_number: int, log_index: int
) -> RegistryEvent:
    """Decode one registry log (topics as raw 32-byte values, data as bytes).

    Mirrors ethers' `Interface.parseLog` on the 0.0.3 ABI, strictly: unknown
    topics, a malformed identity topic or non-canonical ABI data raise
    `EncodingError`.
    """
    if len(topics) != 2:
        raise EncodingError(ERR_UNKNOWN_EVENT)
    topic0, topic1 = (bytes(t) for t in topics)
    event = _TOPIC_TO_EVENT.get(topic0)
    if event is None:
        raise EncodingError(ERR_UNKNOWN_EVENT)
    if len(topic1) != 32 or any(topic1[:12]):
        raise EncodingError(ERR_LOG_DATA)
    identity = checksum(topic1[12:])
    try:
        if event == DID_ATTRIBUTE_CHANGED:
            name, value, valid_to, previous = abi_decode(
                ["bytes32", "bytes", "uint256", "uint256"], bytes(data)
            )
            return AttributeChanged(
                identity, name, value, valid_to, previous, block_number, log_index
            )
        if event == DID_DELEGATE_CHANGED:
            delegate_type, delegate, valid_to, previous = abi_decode(
                ["bytes32", "address", "uint256", "uint256"], bytes(data)
            )
            return DelegateChanged(
                identity,
                delegate_type,
                normalize_address(delegate),
                valid_to,
                previous,
                block_number,
                log_index,
            )
        owner, previous = abi_decode(["address", "uint256"], bytes(data))
        return OwnerChanged(
            identity, normalize_address(owner), previous, block_number, log_index
        )
    except Exception as exc:  # eth_abi raises many unrelated exception types
        raise EncodingError(ERR_LOG_DATA) from exc
