"""Sealing and using asset private keys: the one module that holds plaintext keys.

Keys are encrypted at rest with AES-256-GCM under a master key from
`EVOPS_KEY_ENCRYPTION_KEYS` (the first encrypts, every listed key decrypts). The
associated data is the key's purpose (an asset's key, or the relay operator's) and its
address, so a ciphertext copied onto another row, or from an asset row onto the operator
row and back, fails authentication; after the first decryption of an envelope the
address derived from the key must equal the row's address (the same envelope, still
authenticated on every use, is not derived again). Plaintext key bytes exist only
inside the functions below, for the moment of sealing or signing; callers get
addresses, sealed envelopes and signatures, never keys. No message raised here
contains key bytes or their hex, and every function that touches key material is
marked `sensitive_variables`, so Django's error reports (the DEBUG page, error mails,
tools that read them) show its locals and arguments as stars.

secp256k1 work goes straight to libsecp256k1 through coincurve's cffi binding:
`coincurve.PrivateKey()` derives both the ECDSA and the x-only public key on
construction, which would double the cost of a decrypt-and-sign.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.views.decorators.debug import sensitive_variables

from evops.protocol.hashing import checksum_address as _checksum
from evops.protocol.hashing import keccak256

if TYPE_CHECKING:
    from assets.pkcs11 import TokenKey, TokenPool

ALGORITHM = "aes-256-gcm/v1"
SETTING = "EVOPS_KEY_ENCRYPTION_KEYS"
# What a sealed key is for, bound into the associated data. The asset prefix is the
# one every stored asset key was sealed with; never change either.
ASSET_KEY = "asset-key"
OPERATOR_KEY = "operator-key"
_AAD_PREFIXES = {
    ASSET_KEY: b"evops/asset-key/v1|",
    OPERATOR_KEY: b"evops/operator-key/v1|",
}
_NONCE_BYTES = 12
_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n"
# secp256k1 group order: valid private keys are 1 .. N-1.
_CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

KEYS_NOT_SET = f"Set the {SETTING} environment variable."
MASTER_KEY_MISSING = (
    "This asset key was sealed with master key {key_id!r}, which is not listed in "
    f"{SETTING}. Add that key back to {SETTING} (any position) to use it."
)
DECRYPT_FAILED = (
    "Cannot decrypt the key of {address} with master key {key_id!r} from "
    f"{SETTING}: that master key is wrong, or the ciphertext was tampered with or "
    "belongs to another asset or account."
)
ADDRESS_MISMATCH = (
    "The key stored for {address} derives a different address; the key row does not "
    "belong to this asset."
)
UNSUPPORTED_ALGORITHM = "Unsupported key envelope algorithm {algorithm!r}."
INVALID_KEY = (
    "not a valid secp256k1 private key (expected 64 hex digits, optionally "
    "0x-prefixed, between 1 and the curve order)"
)
KEYSTORE_FAILED = "cannot decrypt the keystore: wrong password or corrupt file"
KEYSTORE_MALFORMED = "not an Ethereum V3/V4 keystore"


class KeyCustodyError(Exception):
    """Base of every error about stored keys (asset and operator)."""


class MasterKeyMissing(KeyCustodyError):
    """The master key that sealed a row is not configured."""


class KeyDecryptionFailed(KeyCustodyError):
    """Authentication failed: wrong master key, tampered or moved ciphertext."""


class KeyAddressMismatch(KeyCustodyError):
    """The decrypted key does not derive the asset's address."""


class InvalidPrivateKey(KeyCustodyError, ValueError):
    """Input that should be a private key is not one (the message never shows it)."""


class KeystoreError(KeyCustodyError, ValueError):
    """A keystore file cannot be decrypted."""


@dataclass(frozen=True)
class SealedKey:
    """An encrypted private key as stored in `AssetKey`."""

    key_id: str
    algorithm: str
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"SealedKey(key_id={self.key_id!r}, algorithm={self.algorithm!r})"


# --- master keys ---------------------------------------------------------------------

_ciphers: dict[bytes, AESGCM] = {}


@sensitive_variables()
def _cipher(material: bytes) -> AESGCM:
    cipher = _ciphers.get(material)
    if cipher is None:
        cipher = _ciphers[material] = AESGCM(material)
    return cipher


@sensitive_variables()
def _master_keys() -> list[tuple[str, bytes]]:
    """The configured master keys; unset is an error here, where a key is needed.

    Settings leave the list empty when the variable is unset, so that commands which
    need no key (help, generate_encryption_key) run on a fresh checkout.
    """
    keys: list[tuple[str, bytes]] = list(settings.EVOPS_KEY_ENCRYPTION_KEYS or [])
    if not keys:
        raise ImproperlyConfigured(KEYS_NOT_SET)
    return keys


def current_key_id() -> str:
    """The id of the master key new envelopes are sealed with (the first listed)."""
    return str(_master_keys()[0][0])


@sensitive_variables()
def _encrypting_key() -> tuple[str, AESGCM]:
    key_id, material = _master_keys()[0]
    return key_id, _cipher(material)


@sensitive_variables()
def _decrypting_key(key_id: str) -> AESGCM:
    for candidate, material in _master_keys():
        if candidate == key_id:
            return _cipher(material)
    raise MasterKeyMissing(MASTER_KEY_MISSING.format(key_id=key_id))


def _aad(address: str, purpose: str) -> bytes:
    try:
        prefix = _AAD_PREFIXES[purpose]
    except KeyError:
        raise ValueError(f"unknown key purpose {purpose!r}") from None
    return prefix + address.lower().encode("ascii")


# --- secp256k1 -----------------------------------------------------------------------


def eip191_digest(message: bytes) -> bytes:
    """The hash `personal_sign` signs: prefix, decimal length, message."""
    return keccak256(_EIP191_PREFIX + str(len(message)).encode("ascii") + message)


@sensitive_variables()
def _public_key(secret: bytes) -> bytes:
    """The 64-byte uncompressed public key (x || y) of a valid secret."""
    pubkey = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_create(GLOBAL_CONTEXT.ctx, pubkey, secret):
        raise InvalidPrivateKey(INVALID_KEY)
    out = ffi.new("unsigned char[65]")
    size = ffi.new("size_t *", 65)
    lib.secp256k1_ec_pubkey_serialize(
        GLOBAL_CONTEXT.ctx, out, size, pubkey, lib.SECP256K1_EC_UNCOMPRESSED
    )
    return bytes(ffi.buffer(out, 65))[1:]


def checksum_address(address20: bytes) -> str:
    """EIP-55 form of a raw 20-byte address (the protocol core's fast rule)."""
    return _checksum(address20)


@functools.lru_cache(maxsize=65536)
def address_of_public_key(public_key: bytes) -> str:
    """The EIP-55 account of a 64-byte public key (x || y). Public data, kept: the
    listener builds a token asset's signer from its stored key for every message."""
    return checksum_address(keccak256(public_key)[-20:])


@sensitive_variables()
def _address_of(secret: bytes) -> str:
    return address_of_public_key(_public_key(secret))


# Envelopes already proven, by a decryption, to hold the key of their address: a
# digest of everything AES-GCM authenticates (master key id, nonce, ciphertext with its
# tag, associated data). Decryption is deterministic and authenticated, so the same
# envelope opened again yields the same key and needs no second derivation (an
# elliptic-curve multiplication, as costly as the signature itself). An envelope is
# still decrypted, and so still authenticated, on every use; a forged or altered one
# has another digest and is checked in full. Bounded: a larger fleet clears and proves
# again.
_PROVEN_ENVELOPES: set[bytes] = set()
_PROVEN_LIMIT = 100_000


def _envelope_digest(sealed: SealedKey, aad: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in (sealed.key_id.encode(), bytes(sealed.nonce), bytes(sealed.ciphertext)):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(aad)
    return digest.digest()


@sensitive_variables()
def _check_derives(secret: bytes, address: str) -> None:
    if keccak256(_public_key(secret))[-20:].hex() != address.lower()[2:]:
        raise KeyAddressMismatch(ADDRESS_MISMATCH.format(address=address))


@sensitive_variables()
def _sign(secret: bytes, digest: bytes) -> bytes:
    if len(digest) != 32:
        raise ValueError("sign_hash needs exactly 32 bytes")
    signature = ffi.new("secp256k1_ecdsa_recoverable_signature *")
    if not lib.secp256k1_ecdsa_sign_recoverable(
        GLOBAL_CONTEXT.ctx, signature, digest, secret, ffi.NULL, ffi.NULL
    ):
        raise KeyCustodyError("libsecp256k1 refused to sign")
    compact = ffi.new("unsigned char[64]")
    recid = ffi.new("int *")
    lib.secp256k1_ecdsa_recoverable_signature_serialize_compact(
        GLOBAL_CONTEXT.ctx, compact, recid, signature
    )
    return bytes(ffi.buffer(compact, 64)) + bytes([27 + recid[0]])


@sensitive_variables()
def _parse_private_key(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        secret = text
    else:
        digits = text.strip()
        if digits[:2] in ("0x", "0X"):
            digits = digits[2:]
        if len(digits) != 64:
            raise InvalidPrivateKey(INVALID_KEY)
        try:
            secret = bytes.fromhex(digits)
        except ValueError:
            raise InvalidPrivateKey(INVALID_KEY) from None
    if len(secret) != 32 or not 0 < int.from_bytes(secret, "big") < _CURVE_ORDER:
        raise InvalidPrivateKey(INVALID_KEY)
    return secret


# --- sealing -------------------------------------------------------------------------


@sensitive_variables()
def _seal(secret: bytes, address: str, purpose: str) -> SealedKey:
    key_id, cipher = _encrypting_key()
    nonce = os.urandom(_NONCE_BYTES)
    return SealedKey(
        key_id=key_id,
        algorithm=ALGORITHM,
        nonce=nonce,
        ciphertext=cipher.encrypt(nonce, secret, _aad(address, purpose)),
    )


@sensitive_variables()
def _open(sealed: SealedKey, address: str, purpose: str) -> bytes:
    """Decrypt and check that the key derives `address`; the only path to a key."""
    if sealed.algorithm != ALGORITHM:
        raise KeyCustodyError(UNSUPPORTED_ALGORITHM.format(algorithm=sealed.algorithm))
    cipher = _decrypting_key(sealed.key_id)
    aad = _aad(address, purpose)
    try:
        secret = cipher.decrypt(bytes(sealed.nonce), bytes(sealed.ciphertext), aad)
    except InvalidTag:
        raise KeyDecryptionFailed(
            DECRYPT_FAILED.format(address=address, key_id=sealed.key_id)
        ) from None
    if len(secret) != 32:
        raise KeyAddressMismatch(ADDRESS_MISMATCH.format(address=address))
    proof = _envelope_digest(sealed, aad)
    if proof not in _PROVEN_ENVELOPES:
        _check_derives(secret, address)
        if len(_PROVEN_ENVELOPES) >= _PROVEN_LIMIT:
            _PROVEN_ENVELOPES.clear()
        _PROVEN_ENVELOPES.add(proof)
    return secret


@sensitive_variables()
def seal_private_key(
    text: str | bytes, *, purpose: str = ASSET_KEY
) -> tuple[str, SealedKey]:
    """Seal a key given as hex (optional 0x) or 32 bytes; return (address, envelope).

    `purpose` (`ASSET_KEY` or `OPERATOR_KEY`) is bound into the envelope: it opens
    only with the same purpose. Raises `InvalidPrivateKey` (whose message never
    contains the input).
    """
    secret = _parse_private_key(text)
    address = _address_of(secret)
    return address, _seal(secret, address, purpose)


@sensitive_variables()
def seal_new_key(*, purpose: str = ASSET_KEY) -> tuple[str, SealedKey]:
    """Make a fresh random key and seal it; the plaintext never leaves this call."""
    while True:
        secret = secrets.token_bytes(32)
        if 0 < int.from_bytes(secret, "big") < _CURVE_ORDER:
            break
    address = _address_of(secret)
    return address, _seal(secret, address, purpose)


@sensitive_variables()
def seal_keystore(
    keystore: Mapping[str, Any], password: str, *, purpose: str = ASSET_KEY
) -> tuple[str, SealedKey]:
    """Decrypt an Ethereum V3/V4 keystore with eth-account and seal its key."""
    from eth_account import Account

    if not isinstance(keystore, Mapping) or "crypto" not in {
        str(k).lower() for k in keystore
    }:
        raise KeystoreError(KEYSTORE_MALFORMED)
    try:
        secret = bytes(Account.decrypt(dict(keystore), password))
    except (ValueError, KeyError, TypeError, NotImplementedError):
        raise KeystoreError(KEYSTORE_FAILED) from None
    return seal_private_key(secret, purpose=purpose)


@sensitive_variables()
def verify(sealed: SealedKey, *, address: str, purpose: str = ASSET_KEY) -> None:
    """Check that `sealed` decrypts and derives `address` (raises otherwise)."""
    _open(sealed, address, purpose)


@sensitive_variables()
def reseal(sealed: SealedKey, *, address: str, purpose: str = ASSET_KEY) -> SealedKey:
    """Re-encrypt under the current first master key, verifying before and after."""
    secret = _open(sealed, address, purpose)
    fresh = _seal(secret, address, purpose)
    _open(fresh, address, purpose)
    return fresh


@sensitive_variables()
def move_into_token(
    sealed: SealedKey, *, address: str, pool: TokenPool, purpose: str = ASSET_KEY
) -> TokenKey:
    """Open a sealed key and store it in a PKCS#11 token (`assets.pkcs11`).

    The plaintext goes from here straight into `C_CreateObject` as a sensitive,
    non-extractable key; the caller gets the token's key id and the public key.
    """
    secret = _open(sealed, address, purpose)
    return pool.create_from_secret(secret, _public_key(secret))


# --- signing -------------------------------------------------------------------------


@sensitive_variables()
def sign_hash(
    sealed: SealedKey, *, address: str, digest: bytes, purpose: str = ASSET_KEY
) -> bytes:
    """Raw signature of a 32-byte hash (no prefix): 65 bytes r||s||v, v in {27,28}."""
    return _sign(_open(sealed, address, purpose), digest)


@sensitive_variables()
def sign_message(
    sealed: SealedKey, *, address: str, message: bytes, purpose: str = ASSET_KEY
) -> bytes:
    """EIP-191 `personal_sign` of `message`: 65 bytes r||s||v, v in {27,28}."""
    return _sign(_open(sealed, address, purpose), eip191_digest(message))


@sensitive_variables()
def sign_transaction(
    sealed: SealedKey,
    *,
    address: str,
    transaction: Mapping[str, Any],
    purpose: str = ASSET_KEY,
) -> bytes:
    """Sign a transaction dict (web3 field names); return the raw signed bytes."""
    from eth_account import Account

    from evops.protocol.ethsig import encode_signed_transaction

    secret = _open(sealed, address, purpose)
    encoded = encode_signed_transaction(
        lambda digest: _sign(secret, digest), transaction
    )
    if encoded is not None:
        return encoded
    signed = Account.sign_transaction(dict(transaction), secret)
    return bytes(signed.raw_transaction)
