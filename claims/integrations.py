"""The external systems the pipeline uses, bundled so services take them as a parameter.

`Integrations` holds the cache-server client, the credential store, the chain, the
issued-credential checker and the asset-signer lookup. `integrations_from_settings()`
is the one place that builds the real ones; tests and the console pass their own.
The `Protocol`s below name exactly what the pipeline calls on each system, so a small
fake satisfies them in unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from evops.integrations.cache_server import ClaimRequestResult, Role, RoleClaim
from evops.integrations.chain import PublishResult
from evops.protocol.credentials import DEFAULT_CLOCK_SKEW
from evops.protocol.policy import TrustPolicy
from evops.protocol.roles import RoleChainVerifier
from evops.protocol.signer import Signer
from evops.protocol.singleflight import SingleFlight


class CacheServer(Protocol):
    async def role(self, signer: Signer, did: str, namespace: str) -> Role: ...

    async def request_claim(
        self,
        signer: Signer,
        did: str,
        *,
        role: Role,
        subject: str | None = None,
        claim_id: str | None = None,
    ) -> ClaimRequestResult: ...

    async def get_claim(
        self, signer: Signer, did: str, claim_id: str
    ) -> RoleClaim | None: ...

    async def accepted_claims(
        self, signer: Signer, did: str
    ) -> Sequence[RoleClaim]: ...

    async def aclose(self) -> None: ...


class CredentialStore(Protocol):
    async def put(self, token: str) -> str: ...

    async def get(self, cid: str) -> str: ...


class Chain(Protocol):
    async def publish_attribute(
        self, asset_signer: Signer, *, name: bytes, value: bytes, validity: int
    ) -> PublishResult: ...

    async def resolve_document(self, did: str) -> dict[str, Any]: ...

    async def resolve_documents(
        self, dids: Sequence[str]
    ) -> dict[str, dict[str, Any]]: ...


@dataclass
class Integrations:
    """Everything outside evops' database that a pipeline step may call."""

    cache: CacheServer
    store: CredentialStore | None
    chain: Chain
    signer_for: Callable[[Any], Signer]
    prequalification_role: str
    allowed_claim_types: tuple[str, ...]
    now: Callable[[], datetime] = field(default=lambda: _utcnow())
    # The local trust policy (`ALLOWED_CLAIM_TYPES`, `TRUSTED_ISSUERS`); None: the
    # allowed claim types above, no pinned issuers.
    trust: TrustPolicy | None = None
    # The process's role-chain verifier: it owns the role-definition and proof
    # caches, so one bundle keeps one.
    verifier: RoleChainVerifier = field(default_factory=RoleChainVerifier)
    clock_skew: float = DEFAULT_CLOCK_SKEW
    # Stores that need the asset's own session (the cache server's /v1/store) are
    # built per asset; `store` is then None.
    store_factory: Callable[[Signer, str], CredentialStore] | None = None
    _closers: list[Any] = field(default_factory=list, repr=False)
    # Role definitions by namespace, with when they were fetched (`peer_calls`).
    roles: dict[str, tuple[float, Role]] = field(default_factory=dict, repr=False)
    # The fetches of role definitions in flight: concurrent misses share one.
    role_flights: SingleFlight[str, Role] = field(
        default_factory=SingleFlight, repr=False
    )

    @property
    def policy(self) -> TrustPolicy:
        if self.trust is None:
            self.trust = TrustPolicy.build(allowed_claim_types=self.allowed_claim_types)
        return self.trust

    def store_for(self, signer: Signer, did: str) -> CredentialStore:
        """The credential store to write this asset's tokens to."""
        if self.store_factory is not None:
            return self.store_factory(signer, did)
        if self.store is None:
            raise ValueError("Integrations has neither a store nor a store_factory.")
        return self.store

    async def aclose(self) -> None:
        for closer in (self.cache, self.store, self.chain, *self._closers):
            close = getattr(closer, "aclose", None)
            if close is not None:
                await close()


def _utcnow() -> datetime:
    from django.utils import timezone

    return timezone.now()


def integrations_from_settings(*, operator: Signer | None = None) -> Integrations:
    """Build the real integrations from settings (the one place that does).

    In relay mode the chain needs the operator's signer; pass it, or the stored
    operator account is used (`assets.signers.operator_signer()`, which raises
    `OperatorNotConfigured`, saying what to run, when there is none).
    """
    from django.conf import settings

    import assets.signers
    import claims.retry
    from evops.integrations.cache_server import cache_server_client_from_settings
    from evops.integrations.chain import chain_from_settings
    from evops.integrations.credential_store import credential_store_from_settings
    from evops.trust import (
        role_chain_verifier_from_settings,
        trust_policy_from_settings,
    )

    if operator is None and settings.CHAIN_WRITE_MODE == "relay":
        operator = assets.signers.operator_signer()
    policy = claims.retry.retry_policy()
    chain = chain_from_settings(operator=operator, retry=policy)
    allowed = tuple(getattr(settings, "ALLOWED_CLAIM_TYPES", ()) or ())
    role = settings.PREQUALIFICATION_ROLE
    cache = cache_server_client_from_settings(
        block_number=chain.block_number, retry=policy
    )
    store: CredentialStore | None = None
    store_factory: Callable[[Signer, str], CredentialStore] | None = None
    if settings.CREDENTIAL_STORE == "cache-server":

        def store_factory(signer: Signer, did: str) -> CredentialStore:
            return credential_store_from_settings(
                cache_server=cache.store_requester(signer, did)
            )

    else:
        store = credential_store_from_settings()
    return Integrations(
        cache=cache,
        store=store,
        store_factory=store_factory,
        chain=chain,
        signer_for=assets.signers.signer_for_asset,
        prequalification_role=role,
        allowed_claim_types=allowed or (role,),
        trust=trust_policy_from_settings(),
        verifier=role_chain_verifier_from_settings(),
        clock_skew=float(settings.CLOCK_SKEW_SECONDS),
    )
