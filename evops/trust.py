"""The verification objects the settings describe (read lazily, here only).

`trust_policy_from_settings()` pins `ALLOWED_CLAIM_TYPES` and `TRUSTED_ISSUERS`;
`role_chain_verifier_from_settings()` builds the process's one `RoleChainVerifier`
(it owns the role-definition and proof caches, so build it once per process and
keep it, like the cache-server client).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from evops.protocol.policy import TrustPolicy
from evops.protocol.roles import RoleChainVerifier


def trust_policy_from_settings() -> TrustPolicy:
    """The local trust policy; a malformed `TRUSTED_ISSUERS` entry is named."""
    try:
        return TrustPolicy.build(
            allowed_claim_types=settings.ALLOWED_CLAIM_TYPES,
            trusted_issuers=settings.TRUSTED_ISSUERS,
        )
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def role_chain_verifier_from_settings() -> RoleChainVerifier:
    """A verifier with the settings' depth, breadth, cache and clock-skew limits."""
    return RoleChainVerifier(
        max_depth=settings.ROLE_CHAIN_MAX_DEPTH,
        max_services=settings.ROLE_PROOF_MAX_SERVICES,
        cache_ttl=float(settings.ROLE_CACHE_SECONDS),
        cache_size=settings.ROLE_CACHE_SIZE,
        clock_skew=float(settings.CLOCK_SKEW_SECONDS),
    )
