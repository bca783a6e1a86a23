"""The protocol core: byte-exact with the Energy Web peers, no Django, no I/O.

See ../shared/docs/protocol.md §2, §3, §7, §8. Submodules: `dids`, `jwt`, `keys`,
`credentials`, `erc1056`, `resolver`, `signer`, `errors`, `hashing`, and for the
publication check: `policy` (local trust policy), `roles` (issuerType ROLE chains,
I/O injected), `verification` (the one check every path ends in), `cids`, `dedupe`.
"""

from __future__ import annotations

from evops.protocol.credentials import (
    AcceptedCredential,
    RejectedCredential,
    RejectionReason,
    check_issued_credential,
    token_sha256,
)
from evops.protocol.dids import (
    DID,
    chain_id_for,
    chain_name_for,
    normalize_address,
    register_chain,
)
from evops.protocol.erc1056 import (
    REGISTRY_EVENTS,
    VALIDITY_FOREVER,
    AttributeChanged,
    DelegateChanged,
    OwnerChanged,
    RegistryEvent,
    attribute_name,
    decode_registry_log,
    parse_service_value,
    service_value,
    set_attribute_calldata,
    set_attribute_signed_calldata,
    set_attribute_signed_digest,
)
from evops.protocol.errors import (
    DIDError,
    EncodingError,
    ProtocolError,
    SignatureError,
    TokenError,
)
from evops.protocol.hashing import keccak256, personal_message_hash
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
from evops.protocol.resolver import (
    AsyncRegistryReader,
    RegistryReader,
    build_did_document,
    find_service_by_hash,
    find_service_for_claim,
    resolve_did_document,
    resolve_did_document_async,
)
from evops.protocol.signer import Signer

__all__ = [
    "DID",
    "REGISTRY_EVENTS",
    "VALIDITY_FOREVER",
    "AcceptedCredential",
    "AsyncRegistryReader",
    "AttributeChanged",
    "DIDError",
    "DecodedToken",
    "DelegateChanged",
    "EncodingError",
    "LocalKeySigner",
    "OwnerChanged",
    "ProtocolError",
    "RegistryEvent",
    "RegistryReader",
    "RejectedCredential",
    "RejectionReason",
    "SignatureError",
    "Signer",
    "TokenError",
    "attribute_name",
    "build_did_document",
    "chain_id_for",
    "chain_name_for",
    "check_issued_credential",
    "claim_request_token",
    "decode_registry_log",
    "decode_token",
    "find_service_by_hash",
    "find_service_for_claim",
    "identity_token",
    "issued_token",
    "keccak256",
    "normalize_address",
    "parse_service_value",
    "personal_message_hash",
    "private_key_to_address",
    "recover_addresses",
    "register_chain",
    "resolve_did_document",
    "resolve_did_document_async",
    "service_value",
    "set_attribute_calldata",
    "set_attribute_signed_calldata",
    "set_attribute_signed_digest",
    "sign_token",
    "token_sha256",
    "verify_token",
]
