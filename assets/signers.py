"""Signer backends for assets: how the rest of evops gets a `Signer` for an asset.

`signer_for_asset(asset)` looks at `asset.signer_backend` and asks the registered
factory for that backend. The first backend, `EncryptedKeySigner`, keeps the sealed
envelope from the database and decrypts it (in `assets.crypto`) for each signature
only; nothing here ever holds a plaintext key. A remote backend (KMS, HSM, Vault)
registers a factory under a new `SignerBackend` value and needs no other change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from assets import crypto
from assets.models import Asset, AssetKey, SignerBackend
from evops.protocol.signer import Signer

NO_KEY = "Asset {did} has no stored key."
UNKNOWN_BACKEND = "Asset {did} uses signer backend {backend!r}, which is not available."

SignerFactory = Callable[[Asset], Signer]
_backends: dict[str, SignerFactory] = {}


def register_backend(name: str, factory: SignerFactory) -> None:
    """Make `factory(asset) -> Signer` serve assets whose `signer_backend` is `name`."""
    _backends[name] = factory


class EncryptedKeySigner:
    """Signs with an asset key held AES-GCM encrypted in the database.

    Holds the sealed envelope and the address it must derive; each call decrypts, checks
    the address, signs, and drops the plaintext.
    """

    def __init__(self, *, address: str, sealed: crypto.SealedKey) -> None:
        self._address = address
        self._sealed = sealed

    @classmethod
    def for_asset(cls, asset: Asset) -> EncryptedKeySigner:
        try:
            row = asset.key
        except AssetKey.DoesNotExist:
            raise crypto.KeyCustodyError(NO_KEY.format(did=asset.did)) from None
        return cls(address=asset.address, sealed=sealed_from_row(row))

    @property
    def address(self) -> str:
        return self._address

    def sign_message(self, message: bytes) -> bytes:
        return crypto.sign_message(self._sealed, address=self._address, message=message)

    def sign_hash(self, digest: bytes) -> bytes:
        return crypto.sign_hash(self._sealed, address=self._address, digest=digest)

    def sign_transaction(self, transaction: Mapping[str, Any]) -> bytes:
        return crypto.sign_transaction(
            self._sealed, address=self._address, transaction=transaction
        )

    def __repr__(self) -> str:
        return (
            f"EncryptedKeySigner(address={self._address!r}, "
            f"key_id={self._sealed.key_id!r})"
        )


def sealed_from_row(row: AssetKey) -> crypto.SealedKey:
    return crypto.SealedKey(
        key_id=row.key_id,
        algorithm=row.algorithm,
        nonce=bytes(row.nonce),
        ciphertext=bytes(row.ciphertext),
    )


def signer_for_asset(asset: Asset) -> Signer:
    """The signer for `asset`, from the backend its `signer_backend` names."""
    factory = _backends.get(asset.signer_backend)
    if factory is None:
        raise crypto.KeyCustodyError(
            UNKNOWN_BACKEND.format(did=asset.did, backend=asset.signer_backend)
        )
    return factory(asset)


register_backend(SignerBackend.LOCAL_ENCRYPTED, EncryptedKeySigner.for_asset)
