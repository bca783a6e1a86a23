"""The signer interface every part of evops signs through.

An asset (or the operator account) is an Ethereum key. Nothing outside the signer
backends ever holds the private key: code that needs a signature asks a `Signer`.
The first backend decrypts a key held encrypted in the database just for the moment of
signing (`assets.signers`); a remote signer (KMS, HSM, Vault) can be added later by
implementing this protocol.

All signatures are 65 bytes `r || s || v` with `v` in {27, 28}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Signer(Protocol):
    """Signs as one Ethereum account."""

    @property
    def address(self) -> str:
        """The account's EIP-55 checksummed address."""
        ...

    def sign_message(self, message: bytes) -> bytes:
        """EIP-191 `personal_sign` of `message` (prefix, decimal length, message).

        The EIP-191 JWT scheme calls this with the 32 raw bytes of a keccak digest.
        """
        ...

    def sign_hash(self, digest: bytes) -> bytes:
        """Sign a raw 32-byte hash with no prefix (ERC-1056 `setAttributeSigned`)."""
        ...

    def sign_transaction(self, transaction: Mapping[str, Any]) -> bytes:
        """Sign a transaction dict (web3 field names); return the raw signed bytes."""
        ...
