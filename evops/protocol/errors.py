"""Error types of the protocol core.

Everything that can go wrong when parsing or checking peer input raises a subclass of
`ProtocolError`, so callers (the NATS listener, reconciliation) can catch one type and
record the message: no message ever contains key material.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: peer input (or our own value) does not follow protocol.md."""


class DIDError(ProtocolError):
    """A DID or address is malformed or names an unknown chain."""


class TokenError(ProtocolError):
    """A token is malformed: wrong shape, bad base64url, bad JSON, too big."""


class SignatureError(ProtocolError):
    """A well-formed token (or signature) does not verify for the expected signer."""


class EncodingError(ProtocolError):
    """A value cannot be encoded or decoded (JSON, ABI, ERC-1056 attribute, log)."""


class VerificationUnavailable(ProtocolError):
    """A lookup a verification needs failed (peer down, timeout): retry later.

    Never read as "allowed" nor as "refused": the claim stays where it is and the
    check runs again. `permanent` is always False, like the integration errors.
    """

    permanent = False
