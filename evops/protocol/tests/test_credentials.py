from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from evops.protocol import credentials
from evops.protocol.credentials import (
    AcceptedCredential,
    RejectedCredential,
    RejectionReason,
    check_issued_credential,
    token_sha256,
)
from evops.protocol.jwt import b64url_encode, compact_json, issued_token, sign_token
from evops.protocol.keys import LocalKeySigner
from evops.protocol.tests.vectors import ASSET, ISSUER, ROLE, V

ISSUER_SIGNER = LocalKeySigner(ISSUER["private_key"])
ASSET_SIGNER = LocalKeySigner(ASSET["private_key"])
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CLAIM_TYPE = ROLE["namespace"]
CLAIM_DATA = {"claimType": CLAIM_TYPE, "claimTypeVersion": ROLE["version"]}
ROLE_BY_DID = {
    "id": 1,
    "name": "prequalified",
    "namespace": CLAIM_TYPE,
    "definition": {
        "version": 1,
        "issuer": {
            "issuerType": "DID",
            "did": ["did:ethr:" + ISSUER["address"].lower()],
        },
    },
}
ROLE_BY_ROLE = {"version": 1, "issuer": {"issuerType": "ROLE", "roleName": "tso"}}


def check(token: Any, **overrides: Any) -> AcceptedCredential | RejectedCredential:
    kwargs: dict[str, Any] = {
        "asset_did": ASSET["did"],
        "allowed_claim_types": [CLAIM_TYPE],
        "role_definition": ROLE_BY_DID,
        "now": NOW,
    }
    kwargs.update(overrides)
    return check_issued_credential(token, **kwargs)


def make(signer: LocalKeySigner = ISSUER_SIGNER, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {"issuer_did": ISSUER["did"], "subject": ASSET["did"]}
    kwargs.update(overrides)
    kwargs.setdefault("claim_data", CLAIM_DATA)
    return issued_token(signer, **kwargs)


def rejected(
    result: AcceptedCredential | RejectedCredential, reason: RejectionReason
) -> RejectedCredential:
    assert isinstance(result, RejectedCredential), result
    assert result.reason is reason
    assert not result.accepted
    assert result.detail
    return result


def test_token_sha256_vector():
    assert token_sha256(V["issued_token"]["token"]) == V["issued_token"]["sha256_hex"]


def test_vector_token_is_accepted():
    token = V["issued_token"]["token"]
    result = check(token)
    assert result == AcceptedCredential(
        subject=ASSET["did"],
        issuer=ISSUER["did"],
        claim_type=CLAIM_TYPE,
        claim_type_version=1,
        token_sha256=V["issued_token"]["sha256_hex"],
        token=token,
    )
    assert result.accepted


def test_bare_definition_is_accepted():
    assert isinstance(
        check(make(), role_definition=ROLE_BY_DID["definition"]), AcceptedCredential
    )


def test_role_issuer_type_is_refused_offline_unless_locally_trusted():
    # The old behaviour (every ROLE-type issuer allowed) let a self-signed token
    # through; offline, only the local trust list can vouch for such an issuer.
    result = rejected(
        check(make(), role_definition=ROLE_BY_ROLE),
        RejectionReason.ISSUER_ROLE_UNPROVEN,
    )
    assert "'tso'" in result.detail
    forged = make(signer=LocalKeySigner.generate())
    rejected(check(forged, role_definition=ROLE_BY_ROLE), RejectionReason.BAD_SIGNATURE)
    trusted = ["did:ethr:" + ISSUER["address"].lower()]
    assert isinstance(
        check(make(), role_definition=ROLE_BY_ROLE, trusted_issuers=trusted),
        AcceptedCredential,
    )
    # a pinned list that does not name the issuer: refused as not trusted
    other = [LocalKeySigner.generate().address]
    rejected(
        check(make(), role_definition=ROLE_BY_ROLE, trusted_issuers=other),
        RejectionReason.ISSUER_NOT_TRUSTED,
    )


def test_pinned_trust_list_narrows_a_did_listing_never_widens_it():
    other = LocalKeySigner.generate().address
    # listed by the hub but not pinned locally: refused
    result = rejected(
        check(make(), trusted_issuers=[other]), RejectionReason.ISSUER_NOT_TRUSTED
    )
    assert result.detail == credentials.DETAIL_NOT_TRUSTED.format(issuer=ISSUER["did"])
    # pinned locally but not listed by the hub: refused too
    role = {"definition": {"issuer": {"issuerType": "DID", "did": [other]}}}
    rejected(
        check(make(), role_definition=role, trusted_issuers=[ISSUER["did"]]),
        RejectionReason.ISSUER_NOT_ALLOWED,
    )
    assert isinstance(
        check(make(), trusted_issuers=[ISSUER["address"], other]), AcceptedCredential
    )


def test_issuer_listed_in_any_did_form_and_case():
    for form in (
        ISSUER["did"],
        "did:ethr:" + ISSUER["address"].upper().replace("0X", "0x"),
        "did:ethr:0x12047:" + ISSUER["address"].lower(),
    ):
        role = {"definition": {"issuer": {"issuerType": "DID", "did": [form]}}}
        assert isinstance(check(make(), role_definition=role), AcceptedCredential)


def test_legacy_subject_form_and_string_version_are_accepted():
    payload = {
        "claimData": {"claimType": CLAIM_TYPE, "claimTypeVersion": "2"},
        "did": "did:ethr:" + ASSET["address"].lower(),
        "signer": ISSUER["did"],
        "iss": ISSUER["did"],
        "sub": "did:ethr:" + ASSET["address"].lower(),
    }
    token = sign_token({"alg": "ES256K", "typ": "JWT"}, payload, ISSUER_SIGNER)
    result = check(token)
    assert isinstance(result, AcceptedCredential)
    assert result.claim_type_version == 2
    assert result.subject == ASSET["did"]


def test_future_exp_is_accepted_and_reported():
    exp = int((NOW + timedelta(days=1)).timestamp())
    result = check(make(exp=exp))
    assert isinstance(result, AcceptedCredential)
    assert result.expires_at == exp


def _unsigned(payload: dict[str, Any]) -> str:
    head = b64url_encode(compact_json({"alg": "ES256K", "typ": "JWT"}))
    return head + "." + b64url_encode(compact_json(payload))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not.a.token",
        V["issued_token"]["token"] + "x",
        b"bytes",
    ],
)
def test_malformed_tokens(token):
    rejected(check(token), RejectionReason.MALFORMED)


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"sub": ASSET["did"]}, credentials.DETAIL_NO_ISSUER),
        ({"iss": "did:web:x", "sub": ASSET["did"]}, credentials.DETAIL_NO_ISSUER),
        (
            {"iss": ISSUER["did"], "signer": ASSET["did"], "sub": ASSET["did"]},
            credentials.DETAIL_SIGNER_MISMATCH,
        ),
        (
            {"iss": ISSUER["did"], "claimData": CLAIM_DATA},
            credentials.DETAIL_NO_SUBJECT,
        ),
        ({"iss": ISSUER["did"], "sub": ASSET["did"]}, credentials.DETAIL_NO_CLAIM_DATA),
        (
            {"iss": ISSUER["did"], "sub": ASSET["did"], "claimData": {"claimType": 1}},
            credentials.DETAIL_NO_CLAIM_DATA,
        ),
        (
            {
                "iss": ISSUER["did"],
                "sub": ASSET["did"],
                "claimData": {"claimType": CLAIM_TYPE, "claimTypeVersion": "v1"},
            },
            credentials.DETAIL_VERSION,
        ),
        (
            {
                "iss": ISSUER["did"],
                "sub": ASSET["did"],
                "claimData": CLAIM_DATA,
                "exp": "tomorrow",
            },
            credentials.DETAIL_EXP,
        ),
    ],
)
def test_malformed_payloads(payload, detail):
    token = sign_token({"alg": "ES256K", "typ": "JWT"}, payload, ISSUER_SIGNER)
    assert rejected(check(token), RejectionReason.MALFORMED).detail == detail


def test_bad_signature():
    # signed by the asset but claiming to come from the issuer
    rejected(check(make(signer=ASSET_SIGNER)), RejectionReason.BAD_SIGNATURE)
    # signature of another token grafted on
    grafted = _unsigned({"iss": ISSUER["did"], "sub": ASSET["did"]}) + "."
    grafted += V["issued_token"]["token"].split(".")[2]
    rejected(check(grafted), RejectionReason.BAD_SIGNATURE)


def test_delegate_signature_needs_the_issuer_document():
    token = make(signer=ASSET_SIGNER)
    document = {
        "id": ISSUER["did"],
        "publicKey": [{"type": "veriKey", "ethereumAddress": ASSET["address"]}],
    }
    result = check(token, issuer_document=document)
    assert isinstance(result, AcceptedCredential)
    assert result.issuer == ISSUER["did"]


def test_wrong_subject():
    other = LocalKeySigner.generate()
    rejected(
        check(make(subject="did:ethr:" + other.address)), RejectionReason.WRONG_SUBJECT
    )
    # same address on another chain is another DID
    rejected(
        check(make(subject="did:ethr:ewc:" + ASSET["address"])),
        RejectionReason.WRONG_SUBJECT,
    )
    # "did" field disagreeing with "sub"
    payload = {
        "claimData": CLAIM_DATA,
        "did": "did:ethr:" + other.address,
        "signer": ISSUER["did"],
        "iss": ISSUER["did"],
        "sub": ASSET["did"],
    }
    token = sign_token({"alg": "ES256K", "typ": "JWT"}, payload, ISSUER_SIGNER)
    rejected(check(token), RejectionReason.WRONG_SUBJECT)


def test_unexpected_claim_type():
    token = make(
        claim_data={"claimType": "other.roles.x.iam.ewc", "claimTypeVersion": 1}
    )
    result = rejected(check(token), RejectionReason.UNEXPECTED_CLAIM_TYPE)
    assert "other.roles.x.iam.ewc" in result.detail
    rejected(
        check(make(), allowed_claim_types=()), RejectionReason.UNEXPECTED_CLAIM_TYPE
    )


@pytest.mark.parametrize(
    "role",
    [
        None,
        {},
        {"definition": {"issuer": {"issuerType": "DID", "did": [ASSET["did"]]}}},
        {"definition": {"issuer": {"issuerType": "DID", "did": "not a list"}}},
        {"definition": {"issuer": {"issuerType": "DID", "did": ["garbage", 5]}}},
        {"definition": {"issuer": {"issuerType": "SOMETHING"}}},
        {"definition": {"version": 1}},
        {"definition": "nonsense"},
    ],
)
def test_issuer_not_allowed(role):
    rejected(check(make(), role_definition=role), RejectionReason.ISSUER_NOT_ALLOWED)


def test_expired():
    exp = int(NOW.timestamp())
    result = rejected(check(make(exp=exp)), RejectionReason.EXPIRED)
    assert str(exp) in result.detail
    rejected(check(make(exp=exp - 3600)), RejectionReason.EXPIRED)


NOW_S = int(NOW.timestamp())


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"nbf": NOW_S + 3600}, RejectionReason.NOT_YET_VALID),
        ({"nbf": (NOW_S + 3600) * 1000}, RejectionReason.NOT_YET_VALID),
        ({"iat": NOW_S + 3600}, RejectionReason.ISSUED_IN_FUTURE),
        ({"iat": (NOW_S + 3600) * 1000}, RejectionReason.ISSUED_IN_FUTURE),
        ({"exp": NOW_S * 1000}, RejectionReason.EXPIRED),
        ({"exp": NOW_S - 1.5}, RejectionReason.EXPIRED),
        ({"nbf": "now"}, RejectionReason.MALFORMED),
        ({"nbf": True}, RejectionReason.MALFORMED),
        ({"iat": None}, RejectionReason.MALFORMED),
        ({"iat": -5}, RejectionReason.MALFORMED),
        ({"exp": -1}, RejectionReason.MALFORMED),
        ({"exp": [NOW_S + 10]}, RejectionReason.MALFORMED),
    ],
)
def test_time_claims_refused(claims, reason):
    payload = {
        "claimData": CLAIM_DATA,
        "did": ASSET["did"],
        "signer": ISSUER["did"],
        "iss": ISSUER["did"],
        "sub": ASSET["did"],
        **claims,
    }
    token = sign_token({"alg": "ES256K", "typ": "JWT"}, payload, ISSUER_SIGNER)
    result = rejected(check(token), reason)
    if reason is RejectionReason.NOT_YET_VALID:
        assert str(NOW_S + 3600) in result.detail


@pytest.mark.parametrize(
    ("claims", "expires_at"),
    [
        ({"nbf": NOW_S - 10, "iat": NOW_S - 10}, None),
        ({"nbf": NOW_S + 30, "iat": NOW_S + 30}, None),  # within the clock skew
        ({"nbf": (NOW_S - 10) * 1000, "iat": (NOW_S - 10) * 1000}, None),
        ({"exp": (NOW_S + 60) * 1000}, NOW_S + 60),  # milliseconds by mistake
        ({"exp": float(NOW_S + 60)}, NOW_S + 60),
        ({"exp": credentials.NEVER_EXPIRES}, None),
        ({"exp": 2**64}, None),
    ],
)
def test_time_claims_accepted(claims, expires_at):
    payload = {
        "claimData": CLAIM_DATA,
        "did": ASSET["did"],
        "signer": ISSUER["did"],
        "iss": ISSUER["did"],
        "sub": ASSET["did"],
        **claims,
    }
    token = sign_token({"alg": "ES256K", "typ": "JWT"}, payload, ISSUER_SIGNER)
    result = check(token)
    assert isinstance(result, AcceptedCredential), result
    assert result.expires_at == expires_at


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), True, "1", None, -1]
)
def test_parse_time_refuses_ambiguous_values(value):
    assert credentials.parse_time(value) is None


def test_clock_skew_is_a_parameter():
    token = make(exp=NOW_S + 3600)  # issued tokens may carry exp; nbf via payload
    payload = {
        "claimData": CLAIM_DATA,
        "iss": ISSUER["did"],
        "sub": ASSET["did"],
        "nbf": NOW_S + 30,
    }
    early = sign_token({"alg": "ES256K", "typ": "JWT"}, payload, ISSUER_SIGNER)
    rejected(check(early, clock_skew=0), RejectionReason.NOT_YET_VALID)
    assert isinstance(check(token, clock_skew=0), AcceptedCredential)


def test_naive_now_is_a_programming_error():
    with pytest.raises(ValueError):
        check(make(), now=datetime(2026, 1, 1))


def test_rejection_reasons_are_stable_strings():
    assert {r.value for r in RejectionReason} == {
        "malformed",
        "bad_signature",
        "wrong_subject",
        "unexpected_claim_type",
        "issuer_not_allowed",
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "issuer_role_unproven",
        "role_chain_too_deep",
        "role_chain_cycle",
        "issuer_not_trusted",
        "role_mismatch",
        "claim_unknown",
        "claim_not_accepted",
        "claim_rejected",
        "claim_subject_mismatch",
        "claim_type_mismatch",
        "token_mismatch",
    }
    assert isinstance(RejectionReason.EXPIRED, str)
    assert str(RejectionReason.EXPIRED) == "expired"
