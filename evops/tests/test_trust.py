"""Verification objects built from settings."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from evops.protocol.keys import LocalKeySigner
from evops.trust import role_chain_verifier_from_settings, trust_policy_from_settings

ADDRESS = LocalKeySigner.generate().address


@override_settings(
    ALLOWED_CLAIM_TYPES=["a.roles.x.iam.ewc"],
    TRUSTED_ISSUERS=[f"did:ethr:{ADDRESS.lower()}"],
)
def test_trust_policy_from_settings():
    policy = trust_policy_from_settings()
    assert policy.allowed_claim_types == frozenset({"a.roles.x.iam.ewc"})
    assert policy.trusted_issuers == frozenset({ADDRESS})


@override_settings(TRUSTED_ISSUERS=["did:ethr:volta:0x" + "0" * 39 + "G"])
def test_malformed_trusted_issuer_is_improperly_configured():
    with pytest.raises(ImproperlyConfigured, match="TRUSTED_ISSUERS"):
        trust_policy_from_settings()


@override_settings(
    ROLE_CHAIN_MAX_DEPTH=2,
    ROLE_PROOF_MAX_SERVICES=7,
    ROLE_CACHE_SECONDS=0,
    ROLE_CACHE_SIZE=77,
    CLOCK_SKEW_SECONDS=5,
)
def test_role_chain_verifier_from_settings():
    verifier = role_chain_verifier_from_settings()
    assert (verifier.max_depth, verifier.max_services, verifier.clock_skew) == (2, 7, 5)
    assert verifier._definitions.maxsize == verifier._proofs.maxsize == 77
