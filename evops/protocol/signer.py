"""The signer interface every part of evops signs through.

An asset (or the operator account) is an Ethereum key. Nothing outside the signer
backends ever holds the private key: code that needs a signature asks a `Signer`.
The first backend decrypts a key held encrypted in the database just for the moment of
signing (`assets.signers`); a remote signer (KMS, HSM, Vault) can be added later by
implementing this protocol.

All signatures are 65 bytes `r || s || v` with `v` in {27, 28}.

A signer whose calls wait on a device or the network (the PKCS#11 backend) says so
with a true `blocking` attribute; async callers sign through `sign_off_loop`, which
runs such calls on a worker thread so the event loop keeps serving the other workers
meanwhile, and runs in-memory signers inline (a thread hop would cost more than the
signature).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

P = ParamSpec("P")
T = TypeVar("T")


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


def is_blocking(signer: object) -> bool:
    """Whether `signer`'s calls wait on a device or the network."""
    return getattr(signer, "blocking", False) is True


async def sign_off_loop(
    signer: object, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`function(*args, **kwargs)`, on a thread when `signer` is blocking."""
    if is_blocking(signer):
        return await asyncio.to_thread(function, *args, **kwargs)
    return function(*args, **kwargs)
