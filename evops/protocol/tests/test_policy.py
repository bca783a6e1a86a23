"""The local trust policy: a hub role definition can narrow it, never widen it."""

from __future__ import annotations

import pytest

from evops.protocol.credentials import RejectedCredential
from evops.protocol.credentials import RejectionReason as R
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner
from evops.protocol.policy import (
    EffectiveRole,
    TrustPolicy,
    decide_offline,
    effective_role,
)
from evops.sandbox.cache_server import role_json

PREQ = "prequalified.roles.tso.apps.elia.iam.ewc"
A, B, C = (LocalKeySigner.generate().address for _ in range(3))


def did(address: str) -> DID:
    return DID.for_address(address)


def effective(role: object, policy: TrustPolicy) -> EffectiveRole:
    result = effective_role(role, claim_type=PREQ, policy=policy)  # type: ignore[arg-type]
    assert isinstance(result, EffectiveRole), result
    return result


def test_unpinned_policy_takes_the_hubs_listing():
    role = effective(
        role_json(PREQ, issuer_dids=[did(A).canonical, "garbage"]),
        TrustPolicy.build(allowed_claim_types=[PREQ]),
    )
    assert role.allowed == role.listed == frozenset({A})
    assert decide_offline(did(A), role) is None
    refused = decide_offline(did(B), role)
    assert refused is not None and refused.reason is R.ISSUER_NOT_ALLOWED


def test_pinned_policy_is_narrowed_by_the_hub_never_widened():
    policy = TrustPolicy.build(
        allowed_claim_types=[PREQ], trusted_issuers=[did(A).canonical, B.lower()]
    )
    # the hub lists A and C: C is not pinned (no widening), B not listed (narrowed)
    role = effective(
        role_json(PREQ, issuer_dids=[did(A).canonical, did(C).canonical]), policy
    )
    assert role.allowed == frozenset({A})
    assert decide_offline(did(A), role) is None
    for address, reason in ((B, R.ISSUER_NOT_ALLOWED), (C, R.ISSUER_NOT_TRUSTED)):
        refused = decide_offline(did(address), role)
        assert refused is not None and refused.reason is reason


def test_role_type_with_and_without_pinned_list():
    role = effective(
        role_json(PREQ, issuer_role="tso.roles.x.iam.ewc"),
        TrustPolicy.build(allowed_claim_types=[PREQ]),
    )
    assert role.allowed is None and role.role_name == "tso.roles.x.iam.ewc"
    refused = decide_offline(did(A), role)
    assert refused is not None and refused.reason is R.ISSUER_ROLE_UNPROVEN
    pinned = TrustPolicy.build(allowed_claim_types=[PREQ], trusted_issuers=[A])
    role = effective(role_json(PREQ, issuer_role="tso.roles.x.iam.ewc"), pinned)
    assert decide_offline(did(A), role) is None
    refused = decide_offline(did(B), role)
    assert refused is not None and refused.reason is R.ISSUER_NOT_TRUSTED


@pytest.mark.parametrize(
    ("role", "allowed", "reason"),
    [
        (role_json(PREQ, issuer_dids=[]), ["other.type"], R.UNEXPECTED_CLAIM_TYPE),
        (None, [PREQ], R.ISSUER_NOT_ALLOWED),
        ({}, [PREQ], R.ISSUER_NOT_ALLOWED),
        ({"definition": "x"}, [PREQ], R.ISSUER_NOT_ALLOWED),
        (role_json("other.type", issuer_dids=[]), [PREQ], R.ROLE_MISMATCH),
        (
            {"namespace": PREQ, "definition": {"issuer": {"issuerType": "X"}}},
            [PREQ],
            R.ISSUER_NOT_ALLOWED,
        ),
        (
            {
                "namespace": PREQ,
                "definition": {"issuer": {"issuerType": "ROLE", "roleName": 5}},
            },
            [PREQ],
            R.ISSUER_ROLE_UNPROVEN,
        ),
    ],
)
def test_refusals(role, allowed, reason):
    result = effective_role(
        role, claim_type=PREQ, policy=TrustPolicy.build(allowed_claim_types=allowed)
    )
    assert isinstance(result, RejectedCredential)
    assert result.reason is reason


@pytest.mark.parametrize("entry", ["", "did:web:x", "0x123", "did:ethr:volta:0xZZ"])
def test_malformed_trusted_issuer_raises(entry):
    with pytest.raises(ValueError, match="TRUSTED_ISSUERS"):
        TrustPolicy.build(allowed_claim_types=[PREQ], trusted_issuers=[entry])


def test_trusted_issuers_in_any_form_are_one_address():
    policy = TrustPolicy.build(
        allowed_claim_types=[PREQ],
        trusted_issuers=[
            A.lower(),
            "did:ethr:" + A,
            "did:ethr:ewc:" + A.upper().replace("0X", "0x"),
        ],
    )
    assert policy.trusted_issuers == frozenset({A})
    assert policy.pinned
