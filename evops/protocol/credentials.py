"""Checks an issued credential before it is published (protocol.md §8).

One function, `check_issued_credential`, returns either an `AcceptedCredential` or a
`RejectedCredential` with a distinct `RejectionReason`, so the claim pipeline can
store a readable outcome instead of catching exceptions. It never raises for bad
peer input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from evops.protocol.dids import DID
from evops.protocol.errors import DIDError, SignatureError, TokenError
from evops.protocol.jwt import decode_token, verify_token


class RejectionReason(StrEnum):
    """Why an issued token is not published; values are stable for storage."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SUBJECT = "wrong_subject"
    UNEXPECTED_CLAIM_TYPE = "unexpected_claim_type"
    ISSUER_NOT_ALLOWED = "issuer_not_allowed"
    EXPIRED = "expired"


DETAIL_NO_ISSUER = "payload has no valid 'iss' DID"
DETAIL_SIGNER_MISMATCH = "payload 'signer' differs from 'iss'"
DETAIL_NO_SUBJECT = "payload has no valid 'sub' DID"
DETAIL_SUBJECT = "token subject {subject} is not the asset {asset}"
DETAIL_DID_FIELD = "payload 'did' {did} is not the asset {asset}"
DETAIL_NO_CLAIM_DATA = "payload has no 'claimData' object with a string 'claimType'"
DETAIL_VERSION = "claimData.claimTypeVersion is not an integer"
DETAIL_CLAIM_TYPE = "claim type {claim_type!r} is not allowed"
DETAIL_EXP = "'exp' is not a number of seconds"
DETAIL_EXPIRED = "token expired at {exp} (now {now})"
DETAIL_NO_ROLE = "no role definition: the issuer cannot be checked"
DETAIL_ISSUER = "issuer {issuer} is not allowed by the role definition"
DETAIL_ISSUER_TYPE = "role definition has an unsupported issuer type {issuer_type!r}"


@dataclass(frozen=True)
class AcceptedCredential:
    """An issued token that may be published for `subject`.

    `subject` and `issuer` are canonical DID strings.
    """

    subject: str
    issuer: str
    claim_type: str
    claim_type_version: int
    token_sha256: str
    token: str
    expires_at: int | None = None
    claim_data: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def accepted(self) -> bool:
        return True


@dataclass(frozen=True)
class RejectedCredential:
    """An issued token that must not be published, and why."""

    reason: RejectionReason
    detail: str

    @property
    def accepted(self) -> bool:
        return False


def token_sha256(token: str) -> str:
    """Lowercase hex sha256 of the token's UTF-8 bytes, no 0x.

    Mirrors iam-client-lib's `publishPublicClaim` hash, which the service entry's
    `hash` carries and reconciliation compares.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _version(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _did_or_none(value: Any, default_chain: str) -> DID | None:
    if not isinstance(value, str):
        return None
    try:
        return DID.parse(value, default_chain=default_chain)
    except DIDError:
        return None


def _issuer_allowed(
    issuer: DID, role_definition: Mapping[str, Any] | None
) -> RejectedCredential | None:
    if not isinstance(role_definition, Mapping) or not role_definition:
        return RejectedCredential(RejectionReason.ISSUER_NOT_ALLOWED, DETAIL_NO_ROLE)
    definition: Any = role_definition.get("definition", role_definition)
    spec = definition.get("issuer") if isinstance(definition, Mapping) else None
    if not isinstance(spec, Mapping):
        return RejectedCredential(RejectionReason.ISSUER_NOT_ALLOWED, DETAIL_NO_ROLE)
    issuer_type = spec.get("issuerType")
    if issuer_type == "ROLE":
        # The issuer must hold a role; the cache server checks that when the TSO
        # issues, and evops cannot check role membership offline.
        return None
    if issuer_type == "DID":
        listed = spec.get("did")
        entries = listed if isinstance(listed, list) else []
        for entry in entries:
            allowed = _did_or_none(entry, issuer.chain)
            if allowed is not None and allowed == issuer:
                return None
        return RejectedCredential(
            RejectionReason.ISSUER_NOT_ALLOWED, DETAIL_ISSUER.format(issuer=issuer)
        )
    return RejectedCredential(
        RejectionReason.ISSUER_NOT_ALLOWED,
        DETAIL_ISSUER_TYPE.format(issuer_type=str(issuer_type)[:40]),
    )


def check_issued_credential(
    token: str,
    *,
    asset_did: DID | str,
    allowed_claim_types: Collection[str],
    role_definition: Mapping[str, Any] | None,
    now: datetime,
    issuer_document: Mapping[str, Any] | None = None,
) -> AcceptedCredential | RejectedCredential:
    """Decide whether an issued token may be published for `asset_did` (§8).

    Mirrors what the verifiers (iam-client-lib `verifyPublicClaim`, the cache server)
    accept, plus the operator's own rules: signature by `iss` (or a `veriKey`
    delegate listed in `issuer_document`), `sub` (and `did`) is the asset, the claim
    type is allowed, `exp` (seconds) has not passed, and the role definition allows
    the issuer (`issuer.did` lists it, or `issuerType` is `ROLE`). `role_definition`
    may be the cache server's Role or its `definition`; `None` (unknown role)
    rejects. Checks run in that order; the first failure is reported.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    asset = DID.coerce(asset_did)
    try:
        decoded = decode_token(token)
    except TokenError as exc:
        return RejectedCredential(RejectionReason.MALFORMED, str(exc))
    payload = decoded.payload
    issuer = _did_or_none(payload.get("iss"), asset.chain)
    if issuer is None:
        return RejectedCredential(RejectionReason.MALFORMED, DETAIL_NO_ISSUER)
    if "signer" in payload and _did_or_none(payload["signer"], asset.chain) != issuer:
        return RejectedCredential(RejectionReason.MALFORMED, DETAIL_SIGNER_MISMATCH)
    try:
        verify_token(token, issuer, did_document=issuer_document)
    except (SignatureError, TokenError) as exc:
        return RejectedCredential(RejectionReason.BAD_SIGNATURE, str(exc))

    subject = _did_or_none(payload.get("sub"), asset.chain)
    if subject is None:
        return RejectedCredential(RejectionReason.MALFORMED, DETAIL_NO_SUBJECT)
    if subject != asset:
        return RejectedCredential(
            RejectionReason.WRONG_SUBJECT,
            DETAIL_SUBJECT.format(subject=subject, asset=asset),
        )
    if "did" in payload and _did_or_none(payload["did"], asset.chain) != asset:
        return RejectedCredential(
            RejectionReason.WRONG_SUBJECT,
            DETAIL_DID_FIELD.format(did=str(payload["did"])[:100], asset=asset),
        )

    claim_data = payload.get("claimData")
    if not isinstance(claim_data, dict) or not isinstance(
        claim_data.get("claimType"), str
    ):
        return RejectedCredential(RejectionReason.MALFORMED, DETAIL_NO_CLAIM_DATA)
    claim_type: str = claim_data["claimType"]
    version = _version(claim_data.get("claimTypeVersion"))
    if version is None:
        return RejectedCredential(RejectionReason.MALFORMED, DETAIL_VERSION)
    if claim_type not in allowed_claim_types:
        return RejectedCredential(
            RejectionReason.UNEXPECTED_CLAIM_TYPE,
            DETAIL_CLAIM_TYPE.format(claim_type=claim_type[:200]),
        )

    expires_at: int | None = None
    if "exp" in payload:
        exp = payload["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return RejectedCredential(RejectionReason.MALFORMED, DETAIL_EXP)
        expires_at = int(exp)
        if exp <= now.timestamp():
            return RejectedCredential(
                RejectionReason.EXPIRED,
                DETAIL_EXPIRED.format(exp=exp, now=int(now.timestamp())),
            )

    rejected = _issuer_allowed(issuer, role_definition)
    if rejected is not None:
        return rejected
    return AcceptedCredential(
        subject=asset.canonical,
        issuer=issuer.canonical,
        claim_type=claim_type,
        claim_type_version=version,
        token_sha256=token_sha256(token),
        token=token,
        expires_at=expires_at,
        claim_data=claim_data,
    )
