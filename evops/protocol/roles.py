"""Whether a role definition allows an issuer (protocol.md §8), role chains included.

A role definition names its issuers in one of two ways: `issuerType: DID` lists
them (`issuer.did`), `issuerType: ROLE` says "whoever holds role `issuer.roleName`".
Holding a role is shown the way every Energy Web reader shows it: the holder's DID
document (resolved from chain) has a service entry pointing, by CID, at a credential
for that role; the content the store returns for the CID hashes to the entry's
`hash`; the credential is a validly signed token whose subject is the holder and
whose `claimType` is the role; and *its* issuer is allowed by that role's own
definition, which may again be ROLE-type. The chain is followed to a DID-type root,
at most `max_depth` credentials deep, and a loop is refused.

I/O is injected as async callables (`RoleSources`), so this module stays pure and
the claims side decides which peers answer. A lookup that fails is never "allowed":
it raises `VerificationUnavailable` (transient, retry later). A chain that does not
prove the role is refused with a `RejectionReason` an operator can read.

`RoleChainVerifier` owns two bounded TTL caches (role definitions, proven
holdings); only successful proofs are cached, so an issuer that gains its role is
accepted at once, and one that loses it is refused after at most `cache_ttl`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

from evops.protocol.cids import CIDError, sha256_hex, validate_cid
from evops.protocol.credentials import (
    DEFAULT_CLOCK_SKEW,
    RejectionReason,
    check_times,
    issuer_spec,
    listed_issuer,
)
from evops.protocol.dids import DID
from evops.protocol.errors import (
    DIDError,
    SignatureError,
    TokenError,
    VerificationUnavailable,
)
from evops.protocol.jwt import decode_token, verify_token
from evops.protocol.policy import EffectiveRole, decide_offline
from evops.protocol.singleflight import SingleFlight

DEFAULT_MAX_DEPTH = 3
DEFAULT_MAX_SERVICES = 50
DEFAULT_CACHE_TTL = 300.0
DEFAULT_CACHE_SIZE = 4096

DETAIL_LISTED = "issuer {issuer} is listed by the role definition"
DETAIL_TRUSTED = "issuer {issuer} is in the local TRUSTED_ISSUERS"
DETAIL_NOT_LISTED = "issuer {issuer} is not listed by the role definition"
DETAIL_NO_DEFINITION = "no role definition for {role!r}: its issuers cannot be checked"
DETAIL_BAD_TYPE = "role definition has an unsupported issuer type {issuer_type!r}"
DETAIL_NO_ROLE_NAME = "ROLE-type definition names no issuer.roleName"
DETAIL_UNPROVEN = (
    "{holder} shows no valid credential for role {role!r} in its DID document "
    "({tried} service entries checked)"
)
DETAIL_TOO_DEEP = "role chain for {holder} holding {role!r} is longer than {limit}"
DETAIL_CYCLE = "role chain loops back to {holder} holding {role!r}"
DETAIL_HOLDS = "{holder} holds {role!r} by a credential from {issuer}"
ERR_RESOLVE = "could not resolve the DID document of {did}"
ERR_FETCH = "could not fetch {cid} from the credential store"
ERR_ROLE = "could not fetch the role definition {role!r}"

_HEX64 = re.compile(r"(0x)?[0-9a-fA-F]{64}\Z")
# Precedence of refusals when several candidate credentials fail differently: the
# most specific reason is the one an operator needs to read.
_SEVERITY = {
    RejectionReason.ROLE_CHAIN_TOO_DEEP: 3,
    RejectionReason.ROLE_CHAIN_CYCLE: 2,
    RejectionReason.ISSUER_ROLE_UNPROVEN: 1,
}

RoleFetcher = Callable[[str], Awaitable[Mapping[str, Any] | None]]
"""`namespace -> Role JSON (or its definition)`, None for an unknown role."""
DocumentResolver = Callable[[DID], Awaitable[Mapping[str, Any]]]
"""`did -> DID document` resolved from chain (never the hub's word)."""
ContentFetcher = Callable[[str], Awaitable[str]]
"""`cid -> content` from the credential store (IPFS cat with a timeout, /v1/store)."""


@dataclass(frozen=True)
class RoleSources:
    """The three lookups a role-chain proof needs, as async callables.

    Errors they raise are transient unless they carry `permanent=True` (the shape of
    every integration error in evops); a permanent content fetch failure only rules
    out that one candidate credential.
    """

    fetch_role: RoleFetcher
    resolve_document: DocumentResolver
    fetch_content: ContentFetcher


@dataclass(frozen=True)
class IssuerDecision:
    """Whether an issuer is allowed, why, and (when proven) the chain that proves it.

    `reason` is None exactly when `allowed`; `via` lists one line per proof step,
    from the issuer to the DID-type root, for the claim's history.
    """

    allowed: bool
    reason: RejectionReason | None
    detail: str
    via: tuple[str, ...] = field(default=())
    # Unix seconds after which a credential in the proof has expired (None: never);
    # a cached proof is not reused past it.
    valid_until: float | None = field(default=None, compare=False)

    @classmethod
    def allow(
        cls, detail: str, via: tuple[str, ...] = (), valid_until: float | None = None
    ) -> IssuerDecision:
        return cls(True, None, detail, via, valid_until)

    @classmethod
    def refuse(cls, reason: RejectionReason, detail: str) -> IssuerDecision:
        return cls(False, reason, detail)


def _permanent(exc: BaseException) -> bool:
    return getattr(exc, "permanent", False) is True


def _services(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    services = document.get("service")
    if not isinstance(services, list):
        return []
    return [s for s in services if isinstance(s, Mapping)]


def _parse_did(value: Any, default_chain: str) -> DID | None:
    if not isinstance(value, str):
        return None
    try:
        return DID.parse(value, default_chain=default_chain)
    except DIDError:
        return None


class RoleChainVerifier:
    """Decides whether a role definition allows an issuer, following role chains.

    One per process (it owns the caches); the lookups (`RoleSources`) are passed
    per call, because reading the hub takes some asset's session. `max_depth` is
    the most role credentials a chain may take (1: the issuer's own role
    credential must come from a DID-listed issuer); `max_services` bounds the
    service entries read from one DID document, so a document with thousands of
    entries cannot make one check fetch thousands of CIDs. `now` returns Unix
    seconds (tests pin it).
    """

    def __init__(
        self,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_services: int = DEFAULT_MAX_SERVICES,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        now: Callable[[], float] = time.time,
    ) -> None:
        if max_depth < 1 or max_services < 1 or cache_size < 1 or cache_ttl < 0:
            raise ValueError("max_depth, max_services and cache_size must be positive")
        self.max_depth = max_depth
        self.max_services = max_services
        self.clock_skew = clock_skew
        self._now = now
        # TTLCache counts time with its own timer; a zero TTL disables caching.
        self._definitions: TTLCache[str, Mapping[str, Any] | None] = TTLCache(
            maxsize=cache_size, ttl=max(cache_ttl, 1e-9)
        )
        self._proofs: TTLCache[tuple[str, str], IssuerDecision] = TTLCache(
            maxsize=cache_size, ttl=max(cache_ttl, 1e-9)
        )
        self._cache_enabled = cache_ttl > 0
        self._definition_flights: SingleFlight[str, Mapping[str, Any] | None] = (
            SingleFlight()
        )
        self.fetches = 0  # store fetches made (for tests and metrics)

    def clear(self) -> None:
        """Forget cached definitions and proofs (after a trust change, for tests)."""
        self._definitions.clear()
        self._proofs.clear()

    # --- lookups -----------------------------------------------------------------

    async def role_definition(
        self, namespace: str, *, sources: RoleSources
    ) -> Mapping[str, Any] | None:
        """The hub's definition of `namespace` (cached); None for an unknown role."""
        if self._cache_enabled and namespace in self._definitions:
            return self._definitions[namespace]

        async def fetch() -> Mapping[str, Any] | None:
            try:
                definition = await sources.fetch_role(namespace)
            except Exception as exc:
                raise VerificationUnavailable(
                    f"{ERR_ROLE.format(role=namespace[:200])}: {exc}"
                ) from exc
            if definition is not None and not isinstance(definition, Mapping):
                definition = None
            if self._cache_enabled:
                self._definitions[namespace] = definition
            return definition

        if not self._cache_enabled:
            return await fetch()
        # Concurrent misses (a burst of credentials of one role) share one fetch.
        return await self._definition_flights.run(namespace, fetch)

    @staticmethod
    async def resolve(did: DID, *, sources: RoleSources) -> Mapping[str, Any]:
        """`did`'s document via `sources`; a failure is `VerificationUnavailable`."""
        try:
            document = await sources.resolve_document(did)
        except Exception as exc:
            raise VerificationUnavailable(
                f"{ERR_RESOLVE.format(did=did)}: {exc}"
            ) from exc
        return document if isinstance(document, Mapping) else {}

    # --- the decision ------------------------------------------------------------

    async def check(
        self, issuer: DID | str, role: EffectiveRole, *, sources: RoleSources
    ) -> IssuerDecision:
        """Whether the (policy-narrowed) role allows `issuer` (protocol.md §8).

        DID type and pinned ROLE type are decided by `policy.decide_offline`; a
        ROLE-type role without a pinned list is decided by the issuer's role chain.
        Raises `VerificationUnavailable` when a lookup fails.
        """
        subject = DID.coerce(issuer)
        if role.issuer_type == "ROLE" and role.allowed is None and role.role_name:
            return await self.holds(subject, role.role_name, sources=sources)
        refused = decide_offline(subject, role)
        if refused is not None:
            return IssuerDecision.refuse(refused.reason, refused.detail)
        detail = DETAIL_TRUSTED if role.issuer_type == "ROLE" else DETAIL_LISTED
        return IssuerDecision.allow(detail.format(issuer=subject))

    async def _allowed_by(
        self,
        issuer: DID,
        spec: Mapping[str, Any],
        *,
        depth: int,
        trail: frozenset[tuple[str, str]],
        sources: RoleSources,
    ) -> IssuerDecision:
        issuer_type = spec.get("issuerType")
        if issuer_type == "DID":
            if listed_issuer(issuer, spec):
                return IssuerDecision.allow(DETAIL_LISTED.format(issuer=issuer))
            return IssuerDecision.refuse(
                RejectionReason.ISSUER_NOT_ALLOWED,
                DETAIL_NOT_LISTED.format(issuer=issuer),
            )
        if issuer_type == "ROLE":
            role = spec.get("roleName")
            if not isinstance(role, str) or not role:
                return IssuerDecision.refuse(
                    RejectionReason.ISSUER_ROLE_UNPROVEN, DETAIL_NO_ROLE_NAME
                )
            return await self.holds(
                issuer, role, sources=sources, _depth=depth + 1, _trail=trail
            )
        return IssuerDecision.refuse(
            RejectionReason.ISSUER_NOT_ALLOWED,
            DETAIL_BAD_TYPE.format(issuer_type=str(issuer_type)[:40]),
        )

    async def holds(
        self,
        holder: DID | str,
        role: str,
        *,
        sources: RoleSources,
        _depth: int = 1,
        _trail: frozenset[tuple[str, str]] = frozenset(),
    ) -> IssuerDecision:
        """Whether `holder` shows a valid credential for `role`, to a DID-type root."""
        subject = DID.coerce(holder)
        key = (subject.address, role)
        if key in _trail:
            return IssuerDecision.refuse(
                RejectionReason.ROLE_CHAIN_CYCLE,
                DETAIL_CYCLE.format(holder=subject, role=role[:200]),
            )
        if _depth > self.max_depth:
            return IssuerDecision.refuse(
                RejectionReason.ROLE_CHAIN_TOO_DEEP,
                DETAIL_TOO_DEEP.format(
                    holder=subject, role=role[:200], limit=self.max_depth
                ),
            )
        if self._cache_enabled:
            cached = self._proofs.get(key)
            if cached is not None and (
                cached.valid_until is None or cached.valid_until > self._now()
            ):
                return cached
        document = await self.resolve(subject, sources=sources)
        candidates = _services(document)
        # Newest entries last (the resolver's order): a renewed credential is tried
        # before the one it replaced.
        candidates = list(reversed(candidates))[: self.max_services]
        unavailable: VerificationUnavailable | None = None
        best = IssuerDecision.refuse(
            RejectionReason.ISSUER_ROLE_UNPROVEN,
            DETAIL_UNPROVEN.format(
                holder=subject, role=role[:200], tried=len(candidates)
            ),
        )
        for service in candidates:
            try:
                found = await self._role_credential(
                    service, subject, role, sources=sources
                )
            except VerificationUnavailable as exc:
                unavailable = exc
                continue
            if found is None:
                continue
            credential_issuer, expires_at = found
            definition = await self.role_definition(role, sources=sources)
            spec = issuer_spec(definition)
            if spec is None:
                decision = IssuerDecision.refuse(
                    RejectionReason.ISSUER_ROLE_UNPROVEN,
                    DETAIL_NO_DEFINITION.format(role=role[:200]),
                )
            else:
                decision = await self._allowed_by(
                    credential_issuer,
                    spec,
                    depth=_depth,
                    trail=_trail | {key},
                    sources=sources,
                )
            if decision.allowed:
                step = DETAIL_HOLDS.format(
                    holder=subject, role=role[:200], issuer=credential_issuer
                )
                limits = [t for t in (expires_at, decision.valid_until) if t]
                proven = IssuerDecision.allow(
                    step,
                    (step, *(decision.via or (decision.detail,))),
                    valid_until=min(limits) if limits else None,
                )
                if self._cache_enabled:
                    self._proofs[key] = proven
                return proven
            if _SEVERITY.get(decision.reason, 0) > _SEVERITY.get(best.reason, 0):  # type: ignore[arg-type]
                best = decision
        if unavailable is not None:
            # A candidate we could not read might be the proof: never refuse (a
            # permanent outcome) on a lookup that failed; retry later.
            raise unavailable
        return best

    async def _role_credential(
        self,
        service: Mapping[str, Any],
        holder: DID,
        role: str,
        *,
        sources: RoleSources,
    ) -> tuple[DID, int | None] | None:
        """The issuer (and expiry) of the credential this entry points at, if one.

        None when the entry is not a valid credential of `holder` for `role` (bad
        CID, hash mismatch, bad signature, other subject or type, expired, not yet
        valid); `VerificationUnavailable` when it could not be read.
        """
        endpoint, digest = service.get("serviceEndpoint"), service.get("hash")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            return None
        hash_alg = service.get("hashAlg", "SHA256")
        if not isinstance(hash_alg, str) or hash_alg.upper() not in (
            "SHA256",
            "SHA-256",
        ):
            return None
        try:
            cid = validate_cid(endpoint)
        except CIDError:
            return None
        self.fetches += 1
        try:
            content = await sources.fetch_content(cid)
        except Exception as exc:
            if _permanent(exc):
                return None  # the store does not hold it: not a proof
            raise VerificationUnavailable(
                f"{ERR_FETCH.format(cid=cid)}: {exc}"
            ) from exc
        if not isinstance(content, str):
            return None
        if sha256_hex(content) != digest.lower().removeprefix("0x"):
            return None
        return await self._credential_issuer(
            content.strip(), holder, role, sources=sources
        )

    async def _credential_issuer(
        self, token: str, holder: DID, role: str, *, sources: RoleSources
    ) -> tuple[DID, int | None] | None:
        try:
            payload = decode_token(token).payload
        except TokenError:
            return None
        claim_data = payload.get("claimData")
        if not isinstance(claim_data, Mapping) or claim_data.get("claimType") != role:
            return None
        subject = _parse_did(payload.get("sub"), holder.chain)
        if subject is None or not subject.same_identity(holder):
            return None
        issuer = _parse_did(payload.get("iss"), holder.chain)
        if issuer is None:
            return None
        if "signer" in payload:
            signer = _parse_did(payload["signer"], holder.chain)
            if signer is None or not signer.same_identity(issuer):
                return None
        expires_at, refused = check_times(
            payload, now=self._now(), clock_skew=self.clock_skew
        )
        if refused is not None:
            return None
        try:
            verify_token(token, issuer)
        except SignatureError:
            # Signed by a veriKey delegate of the issuer? Only its document says.
            document = await self.resolve(issuer, sources=sources)
            try:
                verify_token(token, issuer, did_document=document)
            except (SignatureError, TokenError):
                return None
        except TokenError:
            return None
        return issuer, expires_at


def _namespace(role_definition: Any) -> str:
    if isinstance(role_definition, Mapping):
        namespace = role_definition.get("namespace")
        if isinstance(namespace, str):
            return namespace[:200]
    return "?"
