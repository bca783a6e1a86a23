"""The operator's local trust policy, and how a hub role definition combines with it.

Two settings pin what evops will publish, whatever the cache server says:
`ALLOWED_CLAIM_TYPES` (the claim types evops writes on chain) and, optionally,
`TRUSTED_ISSUERS` (the issuers it accepts). A role definition fetched from the hub
can only *narrow* them: a claim type outside the local list stays refused even when
the hub defines it, and with a pinned trust list an issuer the hub lists but the
operator did not pin is refused (`issuer_not_trusted`). Without a pinned list the
hub decides, ROLE-type issuers by their role chain (`evops.protocol.roles`).

`effective_role` is that combination as one pure function; its result,
`EffectiveRole`, is what the issuer check reads, so the rule lives in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from evops.protocol.credentials import (
    DETAIL_CLAIM_TYPE,
    DETAIL_ISSUER,
    DETAIL_ISSUER_TYPE,
    DETAIL_NO_ROLE,
    DETAIL_NOT_TRUSTED,
    DETAIL_ROLE_UNPROVEN,
    RejectedCredential,
    RejectionReason,
    issuer_spec,
)
from evops.protocol.dids import DID
from evops.protocol.errors import DIDError

DETAIL_ROLE_MISMATCH = (
    "role definition {namespace!r} is not the token's type {claim_type!r}"
)
DETAIL_TRUSTED = "issuer {issuer} is in the local TRUSTED_ISSUERS"
DETAIL_LISTED = "issuer {issuer} is listed by the role definition"
DETAIL_NO_ROLE_NAME = "ROLE-type definition names no issuer.roleName"
ERR_TRUSTED_ENTRY = "TRUSTED_ISSUERS entry {entry!r} is not a DID or address"


@dataclass(frozen=True)
class TrustPolicy:
    """The local policy: allowed claim types and, if pinned, the trusted issuers.

    `trusted_issuers` holds EIP-55 addresses (one key is the same issuer on every
    chain label); empty means "not pinned".
    """

    allowed_claim_types: frozenset[str]
    trusted_issuers: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls, *, allowed_claim_types: Iterable[str], trusted_issuers: Iterable[str] = ()
    ) -> TrustPolicy:
        """From setting values; a malformed trusted issuer raises `ValueError`."""
        addresses = set()
        for entry in trusted_issuers:
            try:
                did = (
                    DID.parse(entry)
                    if entry.startswith("did:")
                    else DID.for_address(entry)
                )
            except DIDError:
                raise ValueError(ERR_TRUSTED_ENTRY.format(entry=entry[:100])) from None
            addresses.add(did.address)
        return cls(frozenset(allowed_claim_types), frozenset(addresses))

    @property
    def pinned(self) -> bool:
        return bool(self.trusted_issuers)


@dataclass(frozen=True)
class EffectiveRole:
    """A hub role definition after the local policy narrowed it.

    DID type: `allowed` are the hub's listed addresses, intersected with the pinned
    list when there is one; `listed` keeps the hub's own list (to tell "not listed"
    from "not trusted"). ROLE type: `role_name` is the role an issuer must hold;
    with a pinned list, `allowed` is that list (trusted issuers need no proof, no
    other issuer passes); without one, `allowed` is None: the role chain decides.
    """

    claim_type: str
    issuer_type: Literal["DID", "ROLE"]
    listed: frozenset[str]
    allowed: frozenset[str] | None
    role_name: str | None = None


def effective_role(
    role_definition: Mapping[str, Any] | None, *, claim_type: str, policy: TrustPolicy
) -> EffectiveRole | RejectedCredential:
    """Combine the hub's role definition for `claim_type` with the local policy.

    Refuses a claim type outside `ALLOWED_CLAIM_TYPES`, a missing definition, a
    definition whose `namespace` is another type's (the hub must not be able to
    vouch for type X with the definition of type Y), and unknown issuer types.
    """
    if claim_type not in policy.allowed_claim_types:
        return RejectedCredential(
            RejectionReason.UNEXPECTED_CLAIM_TYPE,
            DETAIL_CLAIM_TYPE.format(claim_type=claim_type[:200]),
        )
    spec = issuer_spec(role_definition)
    if spec is None or role_definition is None:
        return RejectedCredential(RejectionReason.ISSUER_NOT_ALLOWED, DETAIL_NO_ROLE)
    namespace = role_definition.get("namespace")
    if namespace is not None and namespace != claim_type:
        return RejectedCredential(
            RejectionReason.ROLE_MISMATCH,
            DETAIL_ROLE_MISMATCH.format(
                namespace=str(namespace)[:200], claim_type=claim_type[:200]
            ),
        )
    issuer_type = spec.get("issuerType")
    pinned = policy.trusted_issuers
    if issuer_type == "DID":
        listed = spec.get("did")
        addresses = set()
        for entry in listed if isinstance(listed, list) else []:
            if not isinstance(entry, str):
                continue
            with contextlib.suppress(DIDError):  # a malformed entry lists nobody
                addresses.add(DID.parse(entry).address)
        hub = frozenset(addresses)
        return EffectiveRole(claim_type, "DID", hub, (hub & pinned) if pinned else hub)
    if issuer_type == "ROLE":
        role_name = spec.get("roleName")
        if not isinstance(role_name, str) or not role_name:
            return RejectedCredential(
                RejectionReason.ISSUER_ROLE_UNPROVEN, DETAIL_NO_ROLE_NAME
            )
        return EffectiveRole(
            claim_type, "ROLE", frozenset(), pinned or None, role_name[:500]
        )
    return RejectedCredential(
        RejectionReason.ISSUER_NOT_ALLOWED,
        DETAIL_ISSUER_TYPE.format(issuer_type=str(issuer_type)[:40]),
    )


def decide_offline(issuer: DID, role: EffectiveRole) -> RejectedCredential | None:
    """The issuer check that needs no peer; None when the issuer is allowed.

    A ROLE-type role with no pinned list needs the role chain: refused here as
    unproven (`evops.protocol.roles` proves it when peers are at hand).
    """
    if role.allowed is not None and issuer.address in role.allowed:
        return None
    if role.issuer_type == "DID":
        if issuer.address in role.listed:
            return RejectedCredential(
                RejectionReason.ISSUER_NOT_TRUSTED,
                DETAIL_NOT_TRUSTED.format(issuer=issuer),
            )
        return RejectedCredential(
            RejectionReason.ISSUER_NOT_ALLOWED, DETAIL_ISSUER.format(issuer=issuer)
        )
    if role.allowed is not None:
        return RejectedCredential(
            RejectionReason.ISSUER_NOT_TRUSTED, DETAIL_NOT_TRUSTED.format(issuer=issuer)
        )
    return RejectedCredential(
        RejectionReason.ISSUER_ROLE_UNPROVEN,
        DETAIL_ROLE_UNPROVEN.format(issuer=issuer, role=role.role_name),
    )
