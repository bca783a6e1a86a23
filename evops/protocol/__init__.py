"""The protocol core: byte-exact with the Energy Web peers, no Django, no I/O.

See ../shared/docs/protocol.md §2, §3, §7, §8. Submodules: `dids`, `jwt`, `keys`,
`credentials`, `erc1056`, `resolver`, `signer`, `errors`.
"""

from __future__ import annotations

from evops.protocol.dids import (
    DID,
    chain_id_for,
    chain_name_for,
    normalize_address,
    register_chain,
)
from evops.protocol.errors import (
    DIDError,
    EncodingError,
    ProtocolError,
    SignatureError,
    TokenError,
)
from evops.protocol.jwt import (
    DecodedToken,
    claim_request_token,
    decode_token,
    identity_token,
    issued_token,
    recover_addresses,
    sign_token,
    verify_token,
)
from evops.protocol.keys import LocalKeySigner, private_key_to_address
from evops.protocol.signer import Signer

__all__ = [
    "DID",
    "DIDError",
    "DecodedToken",
    "EncodingError",
    "LocalKeySigner",
    "ProtocolError",
    "SignatureError",
    "Signer",
    "TokenError",
    "chain_id_for",
    "chain_name_for",
    "claim_request_token",
    "decode_token",
    "identity_token",
    "issued_token",
    "normalize_address",
    "private_key_to_address",
    "recover_addresses",
    "register_chain",
    "sign_token",
    "verify_token",
]
