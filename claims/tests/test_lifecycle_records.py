"""A credential's facts (expiry edge cases, status entry) and the once-only moves."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from claims import lifecycle_records as records
from claims.models import LIFECYCLE, ClaimRecord, ClaimStatus
from evops.protocol.credentials import NEVER_EXPIRES
from evops.protocol.dids import DID
from evops.protocol.jwt import HEADER_ES256K, sign_token
from evops.protocol.keys import LocalKeySigner

SOON = int(time.time()) + 3600


def _token(**payload) -> str:
    signer = LocalKeySigner.generate()
    did = DID.for_address(signer.address).canonical
    body = {"claimData": {"claimType": "r", "claimTypeVersion": 1}, "did": did}
    body.update(payload)
    body.update({"iss": did, "sub": did})
    return sign_token(HEADER_ES256K, body, signer)


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@pytest.mark.parametrize(
    ("payload", "hub", "expected"),
    [
        ({"exp": SOON}, None, _at(SOON)),  # seconds
        ({"exp": SOON * 1000}, None, _at(SOON)),  # milliseconds by mistake
        ({"exp": NEVER_EXPIRES}, None, None),  # eternity
        ({"exp": NEVER_EXPIRES + 5}, None, None),
        ({}, None, None),  # missing
        ({}, str(SOON * 1000), _at(SOON)),  # the hub's ms as a string
        ({"exp": SOON + 60}, str(SOON * 1000), _at(SOON)),  # the earlier counts
        ({"exp": SOON}, "not a number", _at(SOON)),
        ({"exp": SOON}, "-5", _at(SOON)),
        ({}, SOON * 1000, _at(SOON)),  # a number from an older hub
        ({"exp": "soon"}, None, None),  # malformed (verification refuses it)
    ],
)
def test_expiry_edge_cases(payload, hub, expected):
    assert records.credential_facts(_token(**payload), hub)["expires_at"] == expected


def test_hub_expiry_parsing():
    assert records.parse_hub_expiry("1700000000000") == 1_700_000_000
    assert records.parse_hub_expiry(" 1700000000000 ") == 1_700_000_000
    assert records.parse_hub_expiry(None) is None
    assert records.parse_hub_expiry(True) is None
    assert records.parse_hub_expiry("1e12") is None
    assert records.parse_hub_expiry("١٢٣") is None  # non-ASCII digits
    assert records.parse_hub_expiry(float("nan")) is None


def test_status_entry_facts_and_unusable_entry():
    url = "https://hub/v1/status-list/urn:uuid:9"
    facts = records.credential_facts(
        _token(
            credentialStatus={
                "type": "StatusList2021Entry",
                "statusListIndex": "4",
                "statusListCredential": url,
            }
        )
    )
    assert (facts["status_list_url"], facts["status_list_index"]) == (url, 4)
    bad = records.credential_facts(_token(credentialStatus={"type": "Nope"}))
    assert bad["status_list_url"] == "" and "unusable" in bad["error"]
    assert records.credential_facts("not a token") == {}


@pytest.mark.django_db
def test_renewal_is_taken_once(make_asset):
    asset = make_asset()
    record = ClaimRecord.objects.create(
        asset=asset, claim_id="c1", role="r", status=ClaimStatus.PUBLISHED
    )
    assert records.claim_take_renewal(record_id=record.pk)
    assert not records.claim_take_renewal(record_id=record.pk)
    records.claim_renewal_failed(record_id=record.pk, error="hub down", actor=LIFECYCLE)
    assert records.claim_take_renewal(record_id=record.pk)  # given back, taken again
    assert records.claim_take_renewal(record_id=record.pk, again=True)  # staff


@pytest.mark.django_db
def test_revoked_is_final_and_blocks_renewal(make_asset):
    asset = make_asset()
    record = ClaimRecord.objects.create(
        asset=asset, claim_id="c1", role="r", status=ClaimStatus.PUBLISHED
    )
    assert records.claim_mark_revoked(
        record_id=record.pk, revoker="did:x", source="test", actor=LIFECYCLE
    )
    assert records.role_revoked_for(asset.pk, "r")
    assert not records.claim_mark_expired(record_id=record.pk, actor=LIFECYCLE)
    record.refresh_from_db()
    assert record.status == ClaimStatus.REVOKED and record.ended_at
    event = record.events.get(kind=ClaimStatus.REVOKED)
    assert event.actor == "lifecycle" and "did:x" in event.message
