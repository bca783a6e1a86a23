"""Checks an issued credential before it is published (protocol.md §8).

`check_token` runs every check that needs no peer (shape, signature, subject, claim
type, `exp`/`nbf`/`iat`) and returns a `CheckedToken` or a `RejectedCredential` with
a distinct `RejectionReason`, so the claim pipeline can store a readable outcome
instead of catching exceptions. `check_issued_credential` adds the issuer check a
role definition allows offline (`issuerType: DID`, or a locally trusted issuer); an
`issuerType: ROLE` issuer needs the role-chain proof of `evops.protocol.roles`, which
`evops.protocol.verification.verify_issued_credential` runs. Nothing here raises for
bad peer input.
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
    NOT_YET_VALID = "not_yet_valid"
    ISSUED_IN_FUTURE = "issued_in_future"
    # issuerType ROLE: no credential for the role was shown (protocol.md §8).
    ISSUER_ROLE_UNPROVEN = "issuer_role_unproven"
    # The role chain is longer than ROLE_CHAIN_MAX_DEPTH, or loops back on itself.
    ROLE_CHAIN_TOO_DEEP = "role_chain_too_deep"
    ROLE_CHAIN_CYCLE = "role_chain_cycle"
    # The hub allows the issuer but the operator's pinned TRUSTED_ISSUERS does not.
    ISSUER_NOT_TRUSTED = "issuer_not_trusted"
    # The role definition is not the one of the token's claim type.
    ROLE_MISMATCH = "role_mismatch"
    # Checks of the hub's claim record against the token (see `claim_checks`).
    CLAIM_UNKNOWN = "claim_unknown"
    CLAIM_NOT_ACCEPTED = "claim_not_accepted"
    CLAIM_REJECTED = "claim_rejected"
    CLAIM_SUBJECT_MISMATCH = "claim_subject_mismatch"
    CLAIM_TYPE_MISMATCH = "claim_type_mismatch"
    TOKEN_MISMATCH = "token_mismatch"  # noqa: S105 - a reason, not a secret


DETAIL_NO_ISSUER = "payload has no valid 'iss' DID"
DETAIL_SIGNER_MISMATCH = "payload 'signer' differs from 'iss'"
DETAIL_NO_SUBJECT = "payload has no valid 'sub' DID"
DETAIL_SUBJECT = "token subject {subject} is not the asset {asset}"
DETAIL_DID_FIELD = "payload 'did' {did} is not the asset {asset}"
DETAIL_NO_CLAIM_DATA = "payload has no 'claimData' object with a string 'claimType'"
DETAIL_VERSION = "claimData.claimTypeVersion is not an integer"
DETAIL_CLAIM_TYPE = "claim type {claim_type!r} is not allowed"
DETAIL_EXP = "'exp' is not a number of seconds"
DETAIL_NBF = "'nbf' is not a number of seconds"
DETAIL_IAT = "'iat' is not a number of seconds"
DETAIL_EXPIRED = "token expired at {exp} (now {now})"
DETAIL_NOT_YET_VALID = "token is not valid before {nbf} (now {now})"
DETAIL_ISSUED_IN_FUTURE = "token claims to be issued at {iat}, after now ({now})"
DETAIL_ROLE_UNPROVEN = (
    "issuer {issuer} must hold role {role!r}; that needs the role-chain proof"
)
DETAIL_NOT_TRUSTED = "issuer {issuer} is not in the local TRUSTED_ISSUERS"
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
    # How the issuer was allowed, one line per step (listing, trust, role chain).
    issuer_proof: tuple[str, ...] = field(default=(), compare=False)

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


# Seconds of clock difference tolerated between us and the issuer for `nbf`/`iat`.
DEFAULT_CLOCK_SKEW = 60.0
# The validity iam-client-lib writes for "never expires" (protocol.md §7); an `exp`
# this large (or larger) never passes.
NEVER_EXPIRES = 9007199254740990
# A time value above this (the year 5138 in seconds) is taken as milliseconds: some
# issuers write JavaScript's Date.now() where seconds belong.
_MILLISECONDS_ABOVE = 100_000_000_000
_INF = float("inf")


def parse_time(value: Any) -> int | None:
    """A JWT time claim (`exp`, `nbf`, `iat`) as whole seconds, or None if malformed.

    Seconds as the JWT spec says; a value too large to be seconds is milliseconds
    (`Date.now()` written by mistake). `NEVER_EXPIRES` and anything above is kept as
    is (it never passes). Booleans, strings, NaN, infinities and negatives are
    malformed: a time claim an attacker can make ambiguous must not pass as valid.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and (value != value or value in (_INF, -_INF)):
        return None
    if value < 0:
        return None
    if value >= NEVER_EXPIRES:
        return NEVER_EXPIRES
    if value > _MILLISECONDS_ABOVE:
        return int(value // 1000)
    return int(value)


def check_times(
    payload: Mapping[str, Any], *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW
) -> tuple[int | None, RejectedCredential | None]:
    """Check `exp`, `nbf` and `iat` of a token payload at `now` (seconds).

    Returns (expiry in seconds or None when it never expires, rejection or None).
    `exp` has passed when `exp <= now` (no skew: an expired credential must not be
    written for ever); `nbf` must be at most `now + clock_skew`; an `iat` later than
    `now + clock_skew` is refused too (a token from the future is forged or from a
    broken clock, and would outlive its real validity).
    """
    expires_at: int | None = None
    if "exp" in payload:
        exp = parse_time(payload["exp"])
        if exp is None:
            return None, RejectedCredential(RejectionReason.MALFORMED, DETAIL_EXP)
        if exp <= now:
            return None, RejectedCredential(
                RejectionReason.EXPIRED, DETAIL_EXPIRED.format(exp=exp, now=int(now))
            )
        expires_at = None if exp >= NEVER_EXPIRES else exp
    if "nbf" in payload:
        nbf = parse_time(payload["nbf"])
        if nbf is None:
            return None, RejectedCredential(RejectionReason.MALFORMED, DETAIL_NBF)
        if nbf > now + clock_skew:
            return None, RejectedCredential(
                RejectionReason.NOT_YET_VALID,
                DETAIL_NOT_YET_VALID.format(nbf=nbf, now=int(now)),
            )
    if "iat" in payload:
        iat = parse_time(payload["iat"])
        if iat is None:
            return None, RejectedCredential(RejectionReason.MALFORMED, DETAIL_IAT)
        if iat > now + clock_skew:
            return None, RejectedCredential(
                RejectionReason.ISSUED_IN_FUTURE,
                DETAIL_ISSUED_IN_FUTURE.format(iat=iat, now=int(now)),
            )
    return expires_at, None


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


def issuer_spec(role_definition: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """`definition.issuer` of a Role object (or of a bare definition), if any."""
    if not isinstance(role_definition, Mapping) or not role_definition:
        return None
    definition: Any = role_definition.get("definition", role_definition)
    spec = definition.get("issuer") if isinstance(definition, Mapping) else None
    return spec if isinstance(spec, Mapping) else None


def listed_issuer(issuer: DID, spec: Mapping[str, Any]) -> bool:
    """True when `issuer.did` of a DID-type spec names `issuer`'s address.

    Addresses are compared, not strings: the hub lists DIDs in any form (legacy
    `did:ethr:0x..`, lowercase) and one key is the issuer on every chain label.
    """
    listed = spec.get("did")
    for entry in listed if isinstance(listed, list) else []:
        allowed = _did_or_none(entry, issuer.chain)
        if allowed is not None and allowed.same_identity(issuer):
            return True
    return False


@dataclass(frozen=True)
class CheckedToken:
    """A token that passed every check needing no peer; the issuer is still open."""

    issuer: DID
    subject: DID
    claim_type: str
    claim_type_version: int
    expires_at: int | None
    claim_data: Mapping[str, Any]
    token: str

    def accept(self, *, issuer_proof: tuple[str, ...] = ()) -> AcceptedCredential:
        """The accepted credential, once the issuer has been allowed."""
        return AcceptedCredential(
            subject=self.subject.canonical,
            issuer=self.issuer.canonical,
            claim_type=self.claim_type,
            claim_type_version=self.claim_type_version,
            token_sha256=token_sha256(self.token),
            token=self.token,
            expires_at=self.expires_at,
            claim_data=self.claim_data,
            issuer_proof=issuer_proof,
        )


def check_token(
    token: str,
    *,
    asset_did: DID | str,
    allowed_claim_types: Collection[str],
    now: datetime,
    issuer_document: Mapping[str, Any] | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> CheckedToken | RejectedCredential:
    """Every check of an issued token that needs no peer (protocol.md §3, §8).

    Signature by `iss` (or a `veriKey` delegate listed in `issuer_document`), `sub`
    (and `did`) is the asset, the claim type is allowed, `exp` has not passed, `nbf`
    has, `iat` is not in the future (both with `clock_skew` seconds of tolerance).
    Checks run in that order; the first failure is reported.
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

    expires_at, rejected = check_times(
        payload, now=now.timestamp(), clock_skew=clock_skew
    )
    if rejected is not None:
        return rejected
    return CheckedToken(
        issuer=issuer,
        subject=asset,
        claim_type=claim_type,
        claim_type_version=version,
        expires_at=expires_at,
        claim_data=claim_data,
        token=token,
    )


def check_issued_credential(
    token: str,
    *,
    asset_did: DID | str,
    allowed_claim_types: Collection[str],
    role_definition: Mapping[str, Any] | None,
    now: datetime,
    issuer_document: Mapping[str, Any] | None = None,
    trusted_issuers: Collection[str] = (),
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> AcceptedCredential | RejectedCredential:
    """Decide offline whether an issued token may be published for `asset_did` (§8).

    Mirrors what the verifiers (iam-client-lib `verifyPublicClaim`, the cache server)
    accept, plus the operator's own rules: `check_token`'s checks, then the role
    definition must allow the issuer: `issuer.did` lists it (and, when
    `trusted_issuers` is pinned, it is also there: the hub narrows the local list,
    never widens it), or for `issuerType: ROLE` it is in `trusted_issuers`; any other
    ROLE-type issuer is refused as unproven here (the role-chain proof needs peers:
    `verification.verify_issued_credential`). `role_definition` may be the cache
    server's Role or its `definition`; `None` (unknown role) rejects.
    """
    checked = check_token(
        token,
        asset_did=asset_did,
        allowed_claim_types=allowed_claim_types,
        now=now,
        issuer_document=issuer_document,
        clock_skew=clock_skew,
    )
    if isinstance(checked, RejectedCredential):
        return checked
    # Imported here: the policy module builds on this one.
    from evops.protocol.policy import TrustPolicy, decide_offline, effective_role

    policy = TrustPolicy.build(
        allowed_claim_types=allowed_claim_types, trusted_issuers=trusted_issuers
    )
    role = effective_role(role_definition, claim_type=checked.claim_type, policy=policy)
    if isinstance(role, RejectedCredential):
        return role
    rejected = decide_offline(checked.issuer, role)
    if rejected is not None:
        return rejected
    return checked.accept()
