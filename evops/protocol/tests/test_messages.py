"""Subject classification and payload parsing (evops/protocol/messages.py)."""

from __future__ import annotations

import json

import pytest

from evops.protocol import messages as wire
from evops.protocol.dids import DID

ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DID_TEXT = f"did:ethr:volta:{ADDRESS}"


def parse(subject: str, payload) -> wire.InboundHint:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return wire.parse_message(subject, raw, limit=65536)


def reason_of(subject: str, payload) -> str:
    with pytest.raises(wire.MessageError) as info:
        parse(subject, payload)
    return info.value.reason


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("*.prequalification.exchange", "abc.prequalification.exchange", True),
        ("*.prequalification.exchange", "a.b.prequalification.exchange", False),
        (
            "*.claim-exchange.*.*",
            f"issue-credential.claim-exchange.{DID_TEXT}.dev",
            True,
        ),
        ("*.claim-exchange.*.*", "issue-credential.claim-exchange.x", False),
        ("foo.>", "foo.bar.baz", True),
        ("foo.>", "foo", False),
    ],
)
def test_subject_matches(pattern, subject, expected):
    assert wire.subject_matches(pattern, subject) is expected


def test_prequalification_request_any_did_form_is_canonicalised():
    hint = parse(
        "tok.prequalification.exchange", {"did": f"did:ethr:{ADDRESS.lower()}"}
    )
    assert hint.type is wire.MessageType.PREQUALIFICATION
    assert hint.did == DID.parse(DID_TEXT)
    assert str(hint.did) == DID_TEXT


def test_current_issue_payload():
    hint = parse(
        f"issue-credential.claim-exchange.{DID_TEXT}.ewf-dev",
        {"type": "issue-credential", "claimId": "c-1"},
    )
    assert (hint.type, hint.claim_id, hint.legacy) == (
        wire.MessageType.ISSUE,
        "c-1",
        False,
    )


def test_legacy_full_message_on_claim_exchange_subject():
    hint = parse(
        f"{DID_TEXT}.claim.exchange",
        {"id": "c-2", "requester": DID_TEXT, "issuedToken": "a.b.c", "acceptedBy": "x"},
    )
    assert hint.legacy and hint.type is wire.MessageType.ISSUE
    assert hint.issued_token == "a.b.c"


def test_legacy_rejection_and_request():
    rejected = parse(
        f"{DID_TEXT}.claim.exchange",
        {"id": "c", "requester": DID_TEXT, "isRejected": True, "rejectionReason": "no"},
    )
    assert rejected.type is wire.MessageType.REJECT
    assert rejected.rejection_reason == "no"
    request = parse(f"{DID_TEXT}.claim.exchange", {"id": "c", "requester": DID_TEXT})
    assert request.type is wire.MessageType.REQUEST


@pytest.mark.parametrize(
    ("subject", "payload", "reason"),
    [
        ("foo.bar", {"did": DID_TEXT}, wire.REASON_BAD_SUBJECT),
        ("a..prequalification.exchange", {"did": DID_TEXT}, wire.REASON_BAD_SUBJECT),
        ("t.prequalification.exchange", b"not json", wire.REASON_NOT_JSON),
        ("t.prequalification.exchange", b"\xff\xfe", wire.REASON_NOT_UTF8),
        ("t.prequalification.exchange", [1, 2], wire.REASON_NOT_OBJECT),
        ("t.prequalification.exchange", {"did": 42}, wire.REASON_BAD_FIELD),
        ("t.prequalification.exchange", {}, wire.REASON_BAD_FIELD),
        ("t.prequalification.exchange", {"did": "did:web:x"}, wire.REASON_INVALID_DID),
        (
            "t.prequalification.exchange",
            {"did": "did:ethr:volta:0x1234"},
            wire.REASON_INVALID_DID,
        ),
        (
            "issue-credential.claim-exchange.not-a-did.dev",
            {"type": "issue-credential", "claimId": "c"},
            wire.REASON_INVALID_DID,
        ),
        (
            f"issue-credential.claim-exchange.{DID_TEXT}.dev",
            {"type": "issue-credential", "claimId": ["c"]},
            wire.REASON_BAD_FIELD,
        ),
        (
            f"issue-credential.claim-exchange.{DID_TEXT}.dev",
            {"type": "reject-credential", "claimId": "c"},
            wire.REASON_TYPE_MISMATCH,
        ),
        (
            f"x.claim-exchange.{DID_TEXT}.dev",
            {"type": "burn-credential", "claimId": "c"},
            wire.REASON_UNKNOWN_TYPE,
        ),
        (
            f"{DID_TEXT}.claim.exchange",
            {
                "id": "c",
                "requester": "did:ethr:0x0000000000000000000000000000000000000001",
                "issuedToken": "a.b.c",
            },
            wire.REASON_DID_MISMATCH,
        ),
        (
            f"{DID_TEXT}.claim.exchange",
            {"id": "c", "requester": DID_TEXT, "isRejected": "yes"},
            wire.REASON_BAD_FIELD,
        ),
    ],
)
def test_malformed_messages_give_a_reason(subject, payload, reason):
    assert reason_of(subject, payload) == reason


def test_payload_over_the_limit_is_refused():
    raw = json.dumps({"did": DID_TEXT, "pad": "x" * 100}).encode()
    with pytest.raises(wire.MessageError) as info:
        wire.parse_message("t.prequalification.exchange", raw, limit=50)
    assert info.value.reason == wire.REASON_TOO_LARGE


def test_subjects_for_deduplicates():
    assert wire.subjects_for("a.b", ["a.b", "c.d"]) == ["a.b", "c.d"]
