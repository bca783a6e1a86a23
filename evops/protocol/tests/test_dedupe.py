"""Duplicate keys by meaning: spelling variants of one message share one key."""

from __future__ import annotations

import json
import random

import pytest

from evops.protocol.dedupe import message_key
from evops.protocol.dids import DID
from evops.protocol.errors import DIDError
from evops.protocol.keys import LocalKeySigner

ADDRESS = LocalKeySigner.generate().address
CANONICAL = f"did:ethr:volta:{ADDRESS}"
CLAIM = "0b0e1f86-7c8b-4f5c-9d64-2b1f3c5e7a90"


def key_of(raw: bytes, kind: str) -> str:
    """What the listener does: parse, then key the parsed fields."""
    payload = json.loads(raw)
    return message_key(kind, DID.parse(payload["did"]), payload.get("claimId", ""))


def variants(payload: dict[str, str], count: int) -> list[bytes]:
    """`count` byte-different spellings of one JSON payload."""
    rng = random.Random(7)
    spaces = ["", " ", "  ", "\n", "\t", "\r\n"]
    found: set[bytes] = set()
    while len(found) < count:
        items = list(payload.items())
        rng.shuffle(items)
        parts = [
            f"{rng.choice(spaces)}{json.dumps(k)}{rng.choice(spaces)}:"
            f"{rng.choice(spaces)}{json.dumps(v)}{rng.choice(spaces)}"
            for k, v in items
        ]
        text = rng.choice(spaces) + "{" + ",".join(parts) + "}" + rng.choice(spaces)
        found.add(text.encode())
    return sorted(found)


def test_a_hundred_spellings_of_one_request_share_one_key():
    dids = [
        CANONICAL,
        "did:ethr:" + ADDRESS,
        "did:ethr:" + ADDRESS.lower(),
        "did:ethr:volta:" + ADDRESS.lower(),
        "did:ethr:0x12047:" + ADDRESS,
        "did:ethr:volta:0x" + ADDRESS[2:].upper(),
    ]
    raws = [raw for did in dids for raw in variants({"did": did}, 100 // len(dids) + 1)]
    assert len(set(raws)) >= 100
    assert {key_of(raw, "prequalification") for raw in raws} == {
        message_key("prequalification", CANONICAL)
    }


def test_notice_key_ignores_spelling_but_not_meaning():
    raws = variants(
        {"did": CANONICAL, "type": "issue-credential", "claimId": CLAIM}, 30
    )
    keys = {key_of(raw, "issue-credential") for raw in raws}
    assert len(keys) == 1
    base = keys.pop()
    # another kind, asset, chain or claim id is another message
    other_asset = "did:ethr:volta:" + LocalKeySigner.generate().address
    assert message_key("reject-credential", CANONICAL, CLAIM) != base
    assert message_key("issue-credential", other_asset, CLAIM) != base
    assert message_key("issue-credential", "did:ethr:ewc:" + ADDRESS, CLAIM) != base
    assert message_key("issue-credential", CANONICAL, CLAIM + "0") != base
    # the claim id is kept exactly: the hub looks claims up by the exact string
    assert message_key("issue-credential", CANONICAL, CLAIM.upper()) != base
    assert message_key("issue-credential", CANONICAL, " " + CLAIM) != base


def test_fields_cannot_be_shifted_into_each_other():
    assert message_key("a", CANONICAL, "bc") != message_key("ab", CANONICAL, "c")


def test_key_shape_fits_the_existing_column():
    key = message_key("prequalification", CANONICAL)
    assert len(key) == 64 and int(key, 16) >= 0


def test_legacy_did_takes_the_default_chain():
    assert message_key("x", "did:ethr:" + ADDRESS, default_chain="ewc") == message_key(
        "x", "did:ethr:ewc:" + ADDRESS
    )


@pytest.mark.parametrize(
    "did", ["", "did:web:example.com", "did:ethr:0x12", "did:ethr:volta:" + "g" * 40]
)
def test_malformed_did_raises(did):
    with pytest.raises(DIDError):
        message_key("prequalification", did)
