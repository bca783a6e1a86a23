"""Signer backends: how the rest of evops gets a `Signer` for an asset or the operator.

`signer_for_asset(asset)` looks at `asset.signer_backend` and asks the registered
factory for that backend. The first backend, `EncryptedKeySigner`, keeps the sealed
envelope from the database and decrypts it (in `assets.crypto`) for each signature
only; nothing here ever holds a plaintext key. A remote backend (KMS, HSM, Vault)
registers a factory under a new `SignerBackend` value and needs no other change.
`TokenSigner` (`assets.pkcs11`) serves assets whose key lives in a PKCS#11 token;
it is built from the asset row alone (key id, token label, public key), with no
database call, and checks that the recorded public key derives the asset's address.

`operator_signer()` gives relay mode's sender: the stored `OperatorAccount` chosen by
`assets.selectors.operator_account_for`, its envelope sealed with the operator purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import connections

from assets import crypto, pkcs11
from assets.models import Asset, AssetKey, OperatorAccount, SignerBackend
from assets.selectors import OperatorNotConfigured, operator_account_for
from evops.protocol.signer import Signer

__all__ = [
    "EncryptedKeySigner",
    "OperatorNotConfigured",
    "operator_signer",
    "register_backend",
    "signer_for_asset",
    "signer_health",
]

NO_KEY = "Asset {did} has no stored key."
UNKNOWN_BACKEND = "Asset {did} uses signer backend {backend!r}, which is not available."
BAD_ROW = "Asset {did} uses the PKCS#11 backend but has no valid key id or public key."

SignerFactory = Callable[[Asset], Signer]
_backends: dict[str, SignerFactory] = {}


def register_backend(name: str, factory: SignerFactory) -> None:
    """Make `factory(asset) -> Signer` serve assets whose `signer_backend` is `name`."""
    _backends[name] = factory


class EncryptedKeySigner:
    """Signs with a key (an asset's or the operator's) held AES-GCM encrypted.

    Holds the sealed envelope, the address it must derive and the purpose it was
    sealed for; each call decrypts, checks the address, signs, and drops the plaintext.
    """

    def __init__(
        self,
        *,
        address: str,
        sealed: crypto.SealedKey,
        purpose: str = crypto.ASSET_KEY,
    ) -> None:
        self._address = address
        self._sealed = sealed
        self._purpose = purpose

    @classmethod
    def for_asset(cls, asset: Asset) -> EncryptedKeySigner:
        try:
            row = asset.key
        except AssetKey.DoesNotExist:
            raise crypto.KeyCustodyError(NO_KEY.format(did=asset.did)) from None
        return cls(address=asset.address, sealed=sealed_from_row(row))

    @classmethod
    def for_operator(cls, account: OperatorAccount) -> EncryptedKeySigner:
        return cls(
            address=account.address,
            sealed=sealed_from_row(account),
            purpose=crypto.OPERATOR_KEY,
        )

    @property
    def address(self) -> str:
        return self._address

    def sign_message(self, message: bytes) -> bytes:
        return crypto.sign_message(
            self._sealed, address=self._address, message=message, purpose=self._purpose
        )

    def sign_hash(self, digest: bytes) -> bytes:
        return crypto.sign_hash(
            self._sealed, address=self._address, digest=digest, purpose=self._purpose
        )

    def sign_transaction(self, transaction: Mapping[str, Any]) -> bytes:
        return crypto.sign_transaction(
            self._sealed,
            address=self._address,
            transaction=transaction,
            purpose=self._purpose,
        )

    def __repr__(self) -> str:
        return (
            f"EncryptedKeySigner(address={self._address!r}, "
            f"key_id={self._sealed.key_id!r}, purpose={self._purpose!r})"
        )


def sealed_from_row(row: AssetKey | OperatorAccount) -> crypto.SealedKey:
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


def token_signer_for_asset(asset: Asset) -> pkcs11.TokenSigner:
    """The PKCS#11 signer of `asset`, from the ids and public key on its row."""
    try:
        key_id = bytes.fromhex(asset.token_key_id)
        public_key = bytes.fromhex(asset.public_key)
    except ValueError:
        raise crypto.KeyCustodyError(BAD_ROW.format(did=asset.did)) from None
    if not key_id or len(public_key) != 64 or not asset.token_label:
        raise crypto.KeyCustodyError(BAD_ROW.format(did=asset.did))
    if crypto.address_of_public_key(public_key) != asset.address:
        raise crypto.KeyAddressMismatch(
            crypto.ADDRESS_MISMATCH.format(address=asset.address)
        )
    return pkcs11.TokenSigner(
        address=asset.address,
        label=asset.token_label,
        key_id=key_id,
        public_key=public_key,
    )


register_backend(SignerBackend.PKCS11, token_signer_for_asset)


def signer_health() -> dict[str, Any]:
    """The signer backend's state for the heartbeat: {"backend", "ok", "error", ...}.

    With a PKCS#11 token configured it asks the token (a random-number call on a
    pooled session), so an unplugged or locked token shows in `listener_health`.
    """
    if settings.SIGNER_BACKEND != SignerBackend.PKCS11 and not settings.PKCS11_MODULE:
        return {"backend": settings.SIGNER_BACKEND, "ok": True, "error": ""}
    return {"backend": settings.SIGNER_BACKEND, **pkcs11.token_health()}


def _operator_signer_closing(chain: str | None) -> Signer:
    try:
        return EncryptedKeySigner.for_operator(operator_account_for(chain=chain))
    finally:
        connections.close_all()  # this thread's connections only


def operator_signer(*, chain: str | None = None) -> Signer:
    """The relay-mode sender's signer for `chain` (default: the configured chain).

    Raises `OperatorNotConfigured` (its message names the command to run and the
    setting) when there is no operator to use. Safe to call inside an event loop:
    the listener and the console build their integrations there, where the ORM
    refuses to run, so the one lookup then happens on a short-lived thread. The
    signer holds only the sealed envelope; nothing is decrypted until it signs.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return EncryptedKeySigner.for_operator(operator_account_for(chain=chain))
    with ThreadPoolExecutor(1, thread_name_prefix="operator-lookup") as pool:
        return pool.submit(_operator_signer_closing, chain).result()
