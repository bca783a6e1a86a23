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


def test_role_issuer_type_and_bare_definition_are_accepted():
    assert isinstance(check(make(), role_definition=ROLE_BY_ROLE), AcceptedCredential)
    assert isinstance(
        check(make(), role_definition=ROLE_BY_DID["definition"]), AcceptedCredential
    )


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
    }
    assert isinstance(RejectionReason.EXPIRED, str)
    assert str(RejectionReason.EXPIRED) == "expired"
