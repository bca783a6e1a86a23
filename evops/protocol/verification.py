"""The one check before a credential is published (protocol.md §8), for every path.

A notice (`issue-credential` with a claim id), a legacy NATS message carrying the
token, reconciliation and a staff retry all end in `verify_for_publication`: the
claim as the cache server holds it, never the message, is the truth. It returns an
`AcceptedCredential` (publish it) or a `RejectedCredential` (record the reason),
and raises `VerificationUnavailable` when a peer needed for the decision failed
(retry later; never publish on the message's word).

Order of checks, first failure reported:

1. the hub's claim (`check_hub_claim`): it exists under the id asked for, its
   subject is the asset, it is accepted and not rejected, it carries an issued
   token, and that token is the one presented (a legacy message's token must equal
   the hub's, byte for byte; reconciliation may present a sha256 instead);
2. the token (`credentials.check_token`): signature by its issuer (or a `veriKey`
   delegate in the issuer's document, resolved from chain), subject is the asset,
   claim type allowed locally, `exp`/`nbf`/`iat`;
3. the token's claim type equals the hub claim's;
4. the role definition of *that* type, fetched through the verifier's cache,
   narrowed by the local policy (`policy.effective_role`);
5. the issuer allowed by it (`roles.RoleChainVerifier.check`): DID listing, local
   trust list, or the role chain.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from evops.protocol.credentials import (
    DEFAULT_CLOCK_SKEW,
    AcceptedCredential,
    CheckedToken,
    RejectedCredential,
    RejectionReason,
    check_token,
    token_sha256,
)
from evops.protocol.dids import DID
from evops.protocol.errors import DIDError, TokenError
from evops.protocol.jwt import decode_token
from evops.protocol.policy import TrustPolicy, effective_role
from evops.protocol.roles import RoleChainVerifier, RoleSources

DETAIL_CLAIM_UNKNOWN = "the cache server holds no claim {claim_id!r}"
DETAIL_CLAIM_OTHER_ID = "the cache server answered claim {got!r} for {claim_id!r}"
DETAIL_CLAIM_SUBJECT = "claim {claim_id!r} is for {subject}, not the asset {asset}"
DETAIL_CLAIM_REJECTED = "the cache server marks claim {claim_id!r} rejected: {reason}"
DETAIL_CLAIM_NOT_ACCEPTED = "the cache server has not accepted claim {claim_id!r}"
DETAIL_CLAIM_UNISSUED = "claim {claim_id!r} has no issued token at the cache server"
DETAIL_NOT_THE_HUBS = (
    "the token presented is not claim {claim_id!r}'s issued token at the cache server"
)
DETAIL_TYPE_MISMATCH = (
    "the token's claim type {token_type!r} is not the claim's {claim_type!r}"
)


@dataclass(frozen=True)
class HubClaim:
    """The fields of the cache server's RoleClaim the check reads.

    Plain values, so the caller maps whatever client type it has
    (`cache_server.RoleClaim`: `HubClaim(id=c.id, subject=c.subject, claim_type=
    c.claim_type, issued_token=c.issued_token, is_accepted=c.is_accepted,
    is_rejected=c.is_rejected, rejection_reason=c.rejection_reason)`).
    """

    id: str
    subject: str
    claim_type: str
    issued_token: str | None
    is_accepted: bool
    is_rejected: bool
    rejection_reason: str | None = None


def check_hub_claim(
    claim: HubClaim | None,
    *,
    claim_id: str,
    asset_did: DID | str,
    presented_token: str | None = None,
    presented_sha256: str | None = None,
) -> RejectedCredential | None:
    """Step 1: the hub's claim backs the publication; None when it does.

    `presented_token` is what a message carried (a legacy message's
    `issuedToken`); `presented_sha256` what another source named (a service
    entry's hash). Either must match the hub's issued token; neither given means
    the hub's token itself is the candidate (a notice, a staff retry).
    """
    asset = DID.coerce(asset_did)
    if claim is None:
        return RejectedCredential(
            RejectionReason.CLAIM_UNKNOWN,
            DETAIL_CLAIM_UNKNOWN.format(claim_id=claim_id[:100]),
        )
    if claim.id != claim_id:
        return RejectedCredential(
            RejectionReason.CLAIM_UNKNOWN,
            DETAIL_CLAIM_OTHER_ID.format(got=claim.id[:100], claim_id=claim_id[:100]),
        )
    try:
        subject: DID | None = DID.parse(claim.subject, default_chain=asset.chain)
    except DIDError:
        subject = None
    if subject != asset:
        return RejectedCredential(
            RejectionReason.CLAIM_SUBJECT_MISMATCH,
            DETAIL_CLAIM_SUBJECT.format(
                claim_id=claim_id[:100], subject=claim.subject[:100], asset=asset
            ),
        )
    if claim.is_rejected:
        return RejectedCredential(
            RejectionReason.CLAIM_REJECTED,
            DETAIL_CLAIM_REJECTED.format(
                claim_id=claim_id[:100], reason=(claim.rejection_reason or "")[:200]
            ),
        )
    if not claim.is_accepted:
        return RejectedCredential(
            RejectionReason.CLAIM_NOT_ACCEPTED,
            DETAIL_CLAIM_NOT_ACCEPTED.format(claim_id=claim_id[:100]),
        )
    if not claim.issued_token:
        return RejectedCredential(
            RejectionReason.CLAIM_NOT_ACCEPTED,
            DETAIL_CLAIM_UNISSUED.format(claim_id=claim_id[:100]),
        )
    mismatch = RejectedCredential(
        RejectionReason.TOKEN_MISMATCH,
        DETAIL_NOT_THE_HUBS.format(claim_id=claim_id[:100]),
    )
    if presented_token is not None and not hmac.compare_digest(
        presented_token.encode("utf-8"), claim.issued_token.encode("utf-8")
    ):
        return mismatch
    if presented_sha256 is not None and (
        presented_sha256.lower().removeprefix("0x") != token_sha256(claim.issued_token)
    ):
        return mismatch
    return None


async def _check_token_with_delegates(
    token: str,
    *,
    asset: DID,
    policy: TrustPolicy,
    now: datetime,
    roles: RoleChainVerifier,
    sources: RoleSources,
    clock_skew: float,
) -> CheckedToken | RejectedCredential:
    """`check_token`; on a bad signature, again with the issuer's document.

    A `veriKey` delegate of the issuer may sign (§3); only the issuer's document,
    resolved from chain, says who its delegates are. Most tokens are signed by the
    issuer's own key, so a forged one costs one resolution.
    """
    kwargs: dict[str, Any] = {
        "asset_did": asset,
        "allowed_claim_types": policy.allowed_claim_types,
        "now": now,
        "clock_skew": clock_skew,
    }
    checked = check_token(token, **kwargs)
    if (
        not isinstance(checked, RejectedCredential)
        or checked.reason is not RejectionReason.BAD_SIGNATURE
    ):
        return checked
    try:
        iss = decode_token(token).payload.get("iss")
        issuer = (
            DID.parse(iss, default_chain=asset.chain) if isinstance(iss, str) else None
        )
    except (TokenError, DIDError):
        issuer = None
    if issuer is None:
        return checked
    document: Mapping[str, Any] = await roles.resolve(issuer, sources=sources)
    return check_token(token, issuer_document=document, **kwargs)


async def verify_issued_credential(
    token: str,
    *,
    asset_did: DID | str,
    claim_type: str | None,
    policy: TrustPolicy,
    now: datetime,
    roles: RoleChainVerifier,
    sources: RoleSources,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> AcceptedCredential | RejectedCredential:
    """Steps 2-5 for a token already backed by the hub's claim of `claim_type`.

    `claim_type` None skips step 3 (only for a token with no hub claim at hand,
    which `verify_for_publication` never does). Raises `VerificationUnavailable`.
    """
    asset = DID.coerce(asset_did)
    checked = await _check_token_with_delegates(
        token,
        asset=asset,
        policy=policy,
        now=now,
        roles=roles,
        sources=sources,
        clock_skew=clock_skew,
    )
    if isinstance(checked, RejectedCredential):
        return checked
    if claim_type is not None and checked.claim_type != claim_type:
        return RejectedCredential(
            RejectionReason.CLAIM_TYPE_MISMATCH,
            DETAIL_TYPE_MISMATCH.format(
                token_type=checked.claim_type[:200], claim_type=claim_type[:200]
            ),
        )
    definition = await roles.role_definition(checked.claim_type, sources=sources)
    role = effective_role(definition, claim_type=checked.claim_type, policy=policy)
    if isinstance(role, RejectedCredential):
        return role
    decision = await roles.check(checked.issuer, role, sources=sources)
    if not decision.allowed:
        assert decision.reason is not None
        return RejectedCredential(decision.reason, decision.detail)
    return checked.accept(issuer_proof=decision.via or (decision.detail,))


async def verify_for_publication(
    claim: HubClaim | None,
    *,
    claim_id: str,
    asset_did: DID | str,
    policy: TrustPolicy,
    now: datetime,
    roles: RoleChainVerifier,
    sources: RoleSources,
    presented_token: str | None = None,
    presented_sha256: str | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> AcceptedCredential | RejectedCredential:
    """The check every publication path ends in (see the module docstring).

    `claim` is what `GET /v1/claim/<claim_id>` returned just now (None for the
    hub's empty answer); fetching it is the caller's, and a failed fetch is the
    caller's transient error, never a reason to publish. Raises
    `VerificationUnavailable` when the role chain or a DID document cannot be read.
    """
    refused = check_hub_claim(
        claim,
        claim_id=claim_id,
        asset_did=asset_did,
        presented_token=presented_token,
        presented_sha256=presented_sha256,
    )
    if refused is not None:
        return refused
    assert claim is not None and claim.issued_token is not None
    return await verify_issued_credential(
        claim.issued_token,
        asset_did=asset_did,
        claim_type=claim.claim_type,
        policy=policy,
        now=now,
        roles=roles,
        sources=sources,
        clock_skew=clock_skew,
    )
