"""A signer holding a raw private key in memory, built on coincurve.

For tests, the sandbox and the cache-server stand-in only: production signing goes
through the assets app's encrypted backend, which decrypts a key just for the moment of
signing. The key never appears in `repr`, `str`, pickles or exception messages.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, NoReturn

from coincurve import PrivateKey
from eth_account import Account

from evops.protocol._crypto import (
    checksum,
    personal_message_hash,
    public_key_to_address_bytes,
)
from evops.protocol.errors import EncodingError
from evops.protocol.ethsig import encode_signed_transaction

ERR_KEY = "private key must be 32 bytes (or 64 hex digits) in the secp256k1 range"
ERR_DIGEST = "digest must be 32 bytes"


def _key_bytes(private_key: bytes | str) -> bytes:
    if isinstance(private_key, str):
        text = private_key[2:] if private_key[:2] in ("0x", "0X") else private_key
        if len(text) != 64:
            raise EncodingError(ERR_KEY)
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise EncodingError(ERR_KEY) from None
    elif isinstance(private_key, bytes | bytearray):
        raw = bytes(private_key)
    else:
        raise EncodingError(ERR_KEY)
    if len(raw) != 32:
        raise EncodingError(ERR_KEY)
    return raw


def _private_key(private_key: bytes | str) -> PrivateKey:
    raw = _key_bytes(private_key)
    try:
        return PrivateKey(raw)
    except Exception:
        # coincurve's message is harmless, but never chain the original in case a
        # future version includes the input.
        raise EncodingError(ERR_KEY) from None


def private_key_to_address(key: bytes | str) -> str:
    """EIP-55 address of a private key (as ethers' `computeAddress`)."""
    return checksum(public_key_to_address_bytes(_private_key(key).public_key))


class LocalKeySigner:
    """`Signer` over an in-memory secp256k1 key (coincurve; eth_account for txs)."""

    __slots__ = ("_address", "_key")

    def __init__(self, private_key: bytes | str) -> None:
        self._key = _private_key(private_key)
        self._address = checksum(public_key_to_address_bytes(self._key.public_key))

    @classmethod
    def generate(cls) -> LocalKeySigner:
        """A signer for a fresh random key (tests, sandbox assets)."""
        while True:
            candidate = secrets.token_bytes(32)
            try:
                return cls(candidate)
            except EncodingError:  # pragma: no cover - probability ~2**-128
                continue

    @property
    def address(self) -> str:
        """The account's EIP-55 address."""
        return self._address

    def sign_message(self, message: bytes) -> bytes:
        """EIP-191 `personal_sign`, as ethers 5 `Wallet.signMessage`.

        Returns 65 bytes r || s || v, v in {27, 28}.
        """
        return self.sign_hash(personal_message_hash(bytes(message)))

    def sign_hash(self, digest: bytes) -> bytes:
        """Raw-hash signature, as ethers' `SigningKey.signDigest` (ERC-1056 signed
        writes). Returns 65 bytes r || s || v, v in {27, 28}."""
        if len(digest) != 32:
            raise EncodingError(ERR_DIGEST)
        signature = self._key.sign_recoverable(bytes(digest), hasher=None)
        return signature[:64] + bytes((signature[64] + 27,))

    def sign_transaction(self, transaction: Mapping[str, Any]) -> bytes:
        """Sign a web3-style transaction dict; return the raw signed bytes.

        Mirrors ethers' `Wallet.signTransaction` (via eth_account) for direct-mode
        `setAttribute` writes.
        """
        encoded = encode_signed_transaction(self.sign_hash, transaction)
        if encoded is not None:
            return encoded
        signed = Account.sign_transaction(dict(transaction), self._key.secret)
        return bytes(signed.raw_transaction)

    def export_private_key(self) -> bytes:
        """The raw key, for the one place that must store it (tests, key import)."""
        return self._key.secret

    def __repr__(self) -> str:
        return f"LocalKeySigner(address={self._address!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("LocalKeySigner cannot be pickled (it holds a private key)")
