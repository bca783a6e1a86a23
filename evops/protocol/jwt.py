"""The "EIP-191 JWT" scheme every token of the protocol uses (protocol.md §3).

Signing: compact JSON header and payload (keys in the order given, as JavaScript's
`JSON.stringify` writes them), base64url without padding, `digest =
keccak256(header_b64 + "." + payload_b64)`, EIP-191 `personal_sign` over the 32 digest
bytes, and a third segment that is base64url of the ASCII string `0x` + 130 lowercase
hex digits (not of the raw 65 bytes).

Verification mirrors the peers (iam-client-lib's `verifyJWT`, the cache server's login
strategy): recover the signer both from the digest directly and from its EIP-191 form;
accept if either is the DID's address, or (optionally) a `veriKey` delegate listed in
the signer's DID document.

Decoding is strict: anything that is not exactly the shape our peers produce is a
`TokenError`, so one token has one byte representation and a single-byte change never
yields another valid token.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coincurve import PublicKey

from evops.protocol._crypto import (
    checksum,
    keccak256,
    personal_message_hash,
    public_key_to_address_bytes,
    recover_address_bytes,
)
from evops.protocol.dids import DID
from evops.protocol.errors import DIDError, EncodingError, SignatureError, TokenError
from evops.protocol.signer import Signer

DEFAULT_MAX_TOKEN_SIZE = 64 * 1024

HEADER_ES256 = {"alg": "ES256", "typ": "JWT"}
HEADER_ES256K = {"alg": "ES256K", "typ": "JWT"}

ERR_NOT_STR = "token must be a string"
ERR_TOO_LARGE = "token is larger than the size limit"
ERR_NOT_ASCII = "token must be ASCII"
ERR_SEGMENTS = "token must have exactly three non-empty segments"
ERR_BASE64 = "segment is not canonical unpadded base64url"
ERR_JSON = "segment is not valid UTF-8 JSON"
ERR_JSON_OBJECT = "header and payload must be JSON objects"
ERR_DUPLICATE_KEY = "duplicate key in JSON object"
ERR_SIGNATURE_SHAPE = "signature segment must encode '0x' + 130 lowercase hex digits"
ERR_SIGNER_MISMATCH = "token is not signed by the expected DID or its delegates"
ERR_SIGNATURE_BYTES = "signer returned a malformed signature"
ERR_INT_FIELD = "{field} must be an int"

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
_SIGNATURE_RE = re.compile(rb"0x[0-9a-f]{130}\Z")
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_PUBKEY_RE = re.compile(r"(0x)?(0[23][0-9a-fA-F]{64}|04[0-9a-fA-F]{128})\Z")


@dataclass(frozen=True)
class DecodedToken:
    """A structurally valid token; its signature is not yet checked."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    digest: bytes
    signature: bytes


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2), as the peers' `base64url` writes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64_VALUES = {
    c: i
    for i, c in enumerate(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
}
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


def b64url_decode(segment: str) -> bytes:
    """Strict inverse of `b64url_encode`: no padding, no stray bits, no whitespace.

    Accepts everything the peers' `base64url` encoder writes, and nothing else.
    """
    remainder = len(segment) % 4
    if remainder == 1 or not _SEGMENT_RE.match(segment):
        raise TokenError(ERR_BASE64)
    # Non-zero unused trailing bits would let two strings decode to the same bytes.
    if remainder and _B64_VALUES[segment[-1]] & (0x0F if remainder == 2 else 0x03):
        raise TokenError(ERR_BASE64)
    padded = segment.encode("ascii").translate(_URLSAFE_TO_STD) + b"=" * (
        -remainder % 4
    )
    try:
        return binascii.a2b_base64(padded, strict_mode=True)
    except (binascii.Error, ValueError):
        raise TokenError(ERR_BASE64) from None


def unverified_payload(token: str) -> dict[str, Any] | None:
    """The payload of someone else's JWT, read without any check; None if unreadable.

    Not for protocol tokens (`decode_token` is strict on purpose): this reads the
    cache server's own HS256 access tokens, whose MAC only it can check, for fields
    such as `exp`. Padding is tolerated, since nothing is decided on the encoding.
    """
    try:
        segment = token.split(".")[1]
        payload = json.loads(
            base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        )
    except (IndexError, ValueError):  # binascii.Error is a ValueError
        return None
    return payload if isinstance(payload, dict) else None


def compact_json(value: Mapping[str, Any]) -> bytes:
    """UTF-8 compact JSON as JavaScript's `JSON.stringify` writes it.

    Keys stay in insertion order, no spaces, non-ASCII characters unescaped. Values
    JSON cannot represent (NaN, lone surrogates, non-string keys) raise
    `EncodingError`.
    """
    try:
        text = json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodingError(f"value is not encodable as JSON: {exc}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise TokenError(ERR_DUPLICATE_KEY)
    return result


def _reject_constant(name: str) -> Any:
    raise TokenError(ERR_JSON)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf, which JSON cannot carry
        raise TokenError(ERR_JSON)
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except TokenError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenError(ERR_JSON) from None
    if not isinstance(value, dict):
        raise TokenError(ERR_JSON_OBJECT)
    return value


def _signature_segment(signature: bytes) -> str:
    if len(signature) != 65 or signature[64] not in (27, 28):
        raise EncodingError(ERR_SIGNATURE_BYTES)
    return b64url_encode(b"0x" + signature.hex().encode("ascii"))


def sign_token(
    header: Mapping[str, Any], payload: Mapping[str, Any], signer: Signer
) -> str:
    """Sign any header/payload with the EIP-191 JWT scheme.

    Mirrors iam-client-lib's `JWT.sign` with an ethers 5 signer: the keys are written
    in the mappings' order, which is why the helpers below build dicts in §3's order.
    """
    signing_input = (
        b64url_encode(compact_json(header)) + "." + b64url_encode(compact_json(payload))
    )
    digest = keccak256(signing_input.encode("ascii"))
    signature = bytes(signer.sign_message(digest))
    return signing_input + "." + _signature_segment(signature)


def _require_int(field: str, value: object) -> None:
    # A str or float here would still sign, but as bytes no peer produces
    # ("claimTypeVersion":"1", "iat":1.65e12): refuse rather than drift silently.
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodingError(ERR_INT_FIELD.format(field=field))


def _did_text(did: DID | str) -> str:
    return DID.coerce(did).canonical


def identity_token(signer: Signer, *, did: DID | str, block_number: int) -> str:
    """The login token: `{"iss": did, "claimData": {"blockNumber": n}}`, ES256 label.

    Mirrors iam-client-lib's `getPublicKeyAndIdentityToken`; the cache server rejects
    it when `blockNumber` is more than a few blocks behind its latest block.
    """
    _require_int("block_number", block_number)
    payload = {"iss": _did_text(did), "claimData": {"blockNumber": block_number}}
    return sign_token(HEADER_ES256, payload, signer)


def claim_request_token(
    signer: Signer,
    *,
    did: DID | str,
    subject: DID | str,
    claim_type: str,
    claim_type_version: int,
    iat_ms: int,
) -> str:
    """The claim-request token posted to `/v1/claim/request` (iat in milliseconds).

    Mirrors iam-client-lib's `createClaimRequest` (`createPublicClaim`), including its
    key order did, signer, claimData, iss, sub, iat.
    """
    _require_int("claim_type_version", claim_type_version)
    _require_int("iat_ms", iat_ms)
    did_text = _did_text(did)
    subject_text = _did_text(subject)
    payload = {
        "did": subject_text,
        "signer": did_text,
        "claimData": {"claimType": claim_type, "claimTypeVersion": claim_type_version},
        "iss": did_text,
        "sub": subject_text,
        "iat": iat_ms,
    }
    return sign_token(HEADER_ES256K, payload, signer)


def issued_token(
    signer: Signer,
    *,
    issuer_did: DID | str,
    subject: DID | str,
    claim_data: Mapping[str, Any],
    exp: int | None = None,
    credential_status: Mapping[str, Any] | None = None,
) -> str:
    """An issued credential as the TSO's issuer signs it (tests, cache stand-in).

    Mirrors iam-client-lib's `issueClaimRequest`: claimData, did, signer, then the
    optional `exp` (seconds) and `credentialStatus` of newer issuers, then iss, sub;
    no `iat`.
    """
    if exp is not None:
        _require_int("exp", exp)
    issuer_text = _did_text(issuer_did)
    subject_text = _did_text(subject)
    payload: dict[str, Any] = {
        "claimData": dict(claim_data),
        "did": subject_text,
        "signer": issuer_text,
    }
    if exp is not None:
        payload["exp"] = exp
    if credential_status is not None:
        payload["credentialStatus"] = dict(credential_status)
    payload["iss"] = issuer_text
    payload["sub"] = subject_text
    return sign_token(HEADER_ES256K, payload, signer)


def decode_token(token: str, *, max_size: int = DEFAULT_MAX_TOKEN_SIZE) -> DecodedToken:
    """Strictly decode a token without checking its signature.

    Mirrors the peers' JWT decoding (iam-client-lib's `decodeJWTToken`, the cache
    server's login strategy), but stricter than their lenient `base64url` and
    `JSON.parse`, so that malformed or ambiguous input is rejected before any
    cryptography: three non-empty segments, canonical unpadded base64url, UTF-8
    JSON objects without duplicate keys, and a signature segment of exactly the
    shape ethers writes.
    Raises `TokenError` only.
    """
    if not isinstance(token, str):
        raise TokenError(ERR_NOT_STR)
    if len(token) > max_size:
        raise TokenError(ERR_TOO_LARGE)
    if not token.isascii():
        raise TokenError(ERR_NOT_ASCII)
    segments = token.split(".")
    if len(segments) != 3 or not all(segments):
        raise TokenError(ERR_SEGMENTS)
    header_b64, payload_b64, signature_b64 = segments
    header = _json_object(b64url_decode(header_b64))
    payload = _json_object(b64url_decode(payload_b64))
    signature_text = b64url_decode(signature_b64)
    if not _SIGNATURE_RE.match(signature_text):
        raise TokenError(ERR_SIGNATURE_SHAPE)
    signature = bytes.fromhex(signature_text[2:].decode("ascii"))
    if signature[64] not in (27, 28):
        raise TokenError(ERR_SIGNATURE_SHAPE)
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    return DecodedToken(
        header=header,
        payload=payload,
        signing_input=signing_input,
        digest=keccak256(signing_input),
        signature=signature,
    )


def recover_addresses(decoded: DecodedToken) -> tuple[str, str]:
    """The two candidate signers: (from the digest directly, from its EIP-191 form).

    Mirrors iam-client-lib / the cache server, which try both because older signers
    signed the raw digest. Raises `SignatureError` if the signature does not recover.
    """
    direct = recover_address_bytes(decoded.digest, decoded.signature)
    prefixed = recover_address_bytes(
        personal_message_hash(decoded.digest), decoded.signature
    )
    return checksum(direct), checksum(prefixed)


def delegate_addresses(
    did_document: Mapping[str, Any] | None, did: DID
) -> frozenset[bytes]:
    """20-byte addresses of the `veriKey` keys in `did_document` for `did`.

    Mirrors iam-client-lib's delegate check: `publicKey[]` entries whose `type` ends in
    `veriKey`, identified by `ethereumAddress` (or `address`) or by `publicKeyHex`.
    A document whose `id` names another account is ignored.
    """
    if not isinstance(did_document, Mapping):
        return frozenset()
    doc_id = did_document.get("id")
    if doc_id is not None:
        try:
            if not DID.coerce(doc_id, default_chain=did.chain).same_identity(did):
                return frozenset()
        except DIDError:
            return frozenset()
    keys = did_document.get("publicKey")
    if not isinstance(keys, list):
        return frozenset()
    found: set[bytes] = set()
    for entry in keys:
        if not isinstance(entry, Mapping):
            continue
        key_type = entry.get("type")
        if not isinstance(key_type, str) or not key_type.endswith("veriKey"):
            continue
        address = entry.get("ethereumAddress", entry.get("address"))
        if isinstance(address, str) and _ADDRESS_RE.match(address):
            found.add(bytes.fromhex(address[2:]))
            continue
        public_hex = entry.get("publicKeyHex")
        if isinstance(public_hex, str) and _PUBKEY_RE.match(public_hex):
            found.add(_address_of_public_hex(public_hex))
    return frozenset(found)


def _address_of_public_hex(public_hex: str) -> bytes:
    text = public_hex[2:] if public_hex.startswith("0x") else public_hex
    try:
        return public_key_to_address_bytes(PublicKey(bytes.fromhex(text)))
    except Exception:
        return b""


def verify_token(
    token: str,
    signer_did: DID | str,
    *,
    did_document: Mapping[str, Any] | None = None,
    max_size: int = DEFAULT_MAX_TOKEN_SIZE,
) -> DecodedToken:
    """Decode `token` and check it is signed by `signer_did` (or a veriKey delegate).

    Mirrors the peers' verification (§3): either recovery may match. This checks the
    signature only; callers check `iss`/`sub`/claims (see `credentials`).
    Raises `TokenError` for malformed tokens, `DIDError` for a bad `signer_did` and
    `SignatureError` when the signature does not match.
    """
    did = DID.coerce(signer_did)
    decoded = decode_token(token, max_size=max_size)
    expected = bytes.fromhex(did.address[2:])
    # The EIP-191 form is what every current signer produces: try it first and skip
    # the second recovery in the common case.
    prefixed = recover_address_bytes(
        personal_message_hash(decoded.digest), decoded.signature
    )
    if prefixed == expected:
        return decoded
    direct = recover_address_bytes(decoded.digest, decoded.signature)
    if direct == expected:
        return decoded
    delegates = delegate_addresses(did_document, did)
    if prefixed in delegates or direct in delegates:
        return decoded
    raise SignatureError(ERR_SIGNER_MISMATCH)
