"""StatusList2021 entries and lists as the hub writes them, and hostile variants."""

from __future__ import annotations

import base64
import gzip
import re
from typing import Any

import pytest

from evops.protocol import status_list as sl
from evops.sandbox.cache_server import namehash as standin_namehash

URL = "https://hub.example/v1/status-list/urn:uuid:1b2c"


def _list(entries: bytes, **overrides: Any) -> dict[str, Any]:
    document = {
        "type": ["VerifiableCredential", "StatusList2021Credential"],
        "issuer": "did:ethr:volta:0x" + "ab" * 20,
        "credentialSubject": {
            "type": "StatusList2021",
            "statusPurpose": "revocation",
            "encodedList": sl.encode_list(entries),
        },
    }
    document.update(overrides)
    return document


def test_entry_as_iam_client_lib_writes_it():
    entry = sl.parse_status_entry(
        {
            "id": URL + "#list",
            "type": "StatusList2021Entry",
            "statusPurpose": "revocation",
            "statusListIndex": "0",
            "statusListCredential": URL,
        }
    )
    assert entry == sl.StatusEntry(url=URL, index=0)
    assert entry.credential_id == "urn:uuid:1b2c"
    assert sl.parse_status_entry(None) is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("x", sl.ERR_STATUS_NOT_OBJECT),
        ({"type": "Other"}, "not StatusList2021Entry"),
        (
            {
                "type": sl.ENTRY_TYPE,
                "statusListCredential": "file:///etc/passwd",
                "statusListIndex": "0",
            },
            sl.ERR_STATUS_URL,
        ),
        (
            {
                "type": sl.ENTRY_TYPE,
                "statusListCredential": URL,
                "statusListIndex": "-1",
            },
            sl.ERR_STATUS_INDEX,
        ),
        (
            {
                "type": sl.ENTRY_TYPE,
                "statusListCredential": URL,
                "statusListIndex": True,
            },
            sl.ERR_STATUS_INDEX,
        ),
        (
            {
                "type": sl.ENTRY_TYPE,
                "statusListCredential": URL,
                "statusListIndex": "9" * 30,
            },
            sl.ERR_STATUS_INDEX,
        ),
        (
            {
                "type": sl.ENTRY_TYPE,
                "statusListCredential": "https://hub.example/",
                "statusListIndex": "0",
            },
            sl.ERR_CREDENTIAL_ID,
        ),
        (
            {
                "type": sl.ENTRY_TYPE,
                "statusListCredential": "https://h/v1/%2e%2e",
                "statusListIndex": "0",
            },
            sl.ERR_CREDENTIAL_ID,
        ),
    ],
)
def test_malformed_entries_are_errors(value, error):
    with pytest.raises(sl.StatusListError, match=re.escape(error.split("{")[0][:30])):
        sl.parse_status_entry(value)


def test_list_byte_at_index():
    listing = sl.parse_status_list(_list(bytes([0, 1, 0])))
    assert listing.issuer == "did:ethr:volta:0x" + "ab" * 20
    assert [listing.revoked(i) for i in range(3)] == [False, True, False]
    with pytest.raises(sl.StatusListError, match="outside"):
        listing.revoked(3)
    with pytest.raises(sl.StatusListError, match="neither 0 nor 1"):
        sl.parse_status_list(_list(bytes([7]))).revoked(0)


def test_issuer_object_and_urlsafe_unpadded_base64():
    document = _list(b"\x01", issuer={"id": "did:ethr:volta:0x" + "cd" * 20})
    encoded = base64.urlsafe_b64encode(gzip.compress(b"\x01")).decode().rstrip("=")
    document["credentialSubject"]["encodedList"] = encoded
    listing = sl.parse_status_list(document)
    assert listing.issuer.endswith("cd" * 20) and listing.revoked(0)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"type": ["VerifiableCredential"]}, sl.ERR_LIST_TYPE),
        ({"issuer": ""}, sl.ERR_LIST_ISSUER),
        (
            {"credentialSubject": {"statusPurpose": "suspension", "encodedList": ""}},
            "not revocation",
        ),
        ({"credentialSubject": {"encodedList": 5}}, sl.ERR_LIST_ENCODED),
        ({"credentialSubject": {"encodedList": "!!!"}}, sl.ERR_LIST_BASE64),
        (
            {"credentialSubject": {"encodedList": base64.b64encode(b"plain").decode()}},
            sl.ERR_LIST_GZIP,
        ),
    ],
)
def test_malformed_lists_are_errors(change, error):
    with pytest.raises(sl.StatusListError, match=re.escape(error.split("{")[0][:25])):
        sl.parse_status_list(_list(b"\x00", **change))
    with pytest.raises(sl.StatusListError, match=sl.ERR_LIST_NOT_OBJECT):
        sl.parse_status_list([])


def test_gzip_bomb_stops_at_the_limit():
    bomb = base64.b64encode(gzip.compress(b"\x00" * (50 * 1024 * 1024))).decode()
    with pytest.raises(sl.StatusListError, match="larger than"):
        sl.decode_list(bomb)
    with pytest.raises(sl.StatusListError, match="larger than"):
        sl.decode_list("A" * (4 * sl.MAX_LIST_BYTES + 4))


def test_namehash_matches_the_hub():
    role = "prequalified.roles.tso.apps.elia.iam.ewc"
    assert "0x" + sl.namehash(role).hex() == standin_namehash(role)
    assert sl.namehash("") == b"\x00" * 32


def test_role_revokers_fall_back_to_issuers():
    did = "did:ethr:volta:0x" + "ab" * 20
    assert sl.role_revokers({"revoker": {"revokerType": "DID", "did": [did]}}) == (
        "DID",
        (did,),
    )
    assert sl.role_revokers({"issuer": {"issuerType": "DID", "did": [did]}}) == (
        "DID",
        (did,),
    )
    assert sl.role_revokers({"revoker": {"revokerType": "ROLE", "roleName": "x"}}) == (
        "ROLE",
        (),
    )
    assert sl.role_revokers(None) == ("", ())
