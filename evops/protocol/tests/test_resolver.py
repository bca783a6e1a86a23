from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from evops.protocol.dids import DID
from evops.protocol.erc1056 import (
    VALIDITY_FOREVER,
    AttributeChanged,
    DelegateChanged,
    OwnerChanged,
    attribute_name,
    service_value,
)
from evops.protocol.errors import ProtocolError
from evops.protocol.jwt import verify_token
from evops.protocol.resolver import (
    RegistryEvent,
    build_did_document,
    find_service_by_hash,
    find_service_for_claim,
    resolve_did_document,
    resolve_did_document_async,
)
from evops.protocol.tests.vectors import ASSET, ISSUER, V

IDENTITY = ASSET["address"]
DOC_ID = ASSET["did"]
NOW = 1_700_000_000
SVC = attribute_name()
H1, H2, H3 = "11" * 32, "22" * 32, "33" * 32


class FakeRegistry:
    """Models the 0.0.3 registry's bookkeeping: `changed` and `previousChange`."""

    def __init__(self, identity: str = IDENTITY) -> None:
        self.identity = identity
        self.owner = identity
        self.changed_at = 0
        self.by_block: dict[int, list[RegistryEvent]] = {}
        self.log_calls: list[int] = []

    def _record(
        self, block: int, make: Callable[[int, int], RegistryEvent]
    ) -> RegistryEvent:
        logs = self.by_block.setdefault(block, [])
        event = make(self.changed_at, len(logs))
        logs.append(event)
        self.changed_at = block
        return event

    def set_attribute(
        self,
        block: int,
        value: bytes,
        valid_to: int,
        name: bytes = SVC,
        identity: str | None = None,
    ) -> RegistryEvent:
        who = identity or self.identity
        return self._record(
            block,
            lambda prev, idx: AttributeChanged(
                who, name, value, valid_to, prev, block, idx
            ),
        )

    def add_delegate(
        self, block: int, delegate: str, valid_to: int, kind: str = "veriKey"
    ) -> RegistryEvent:
        return self._record(
            block,
            lambda prev, idx: DelegateChanged(
                self.identity,
                attribute_name(kind),
                delegate,
                valid_to,
                prev,
                block,
                idx,
            ),
        )

    def change_owner(self, block: int, owner: str) -> RegistryEvent:
        self.owner = owner
        return self._record(
            block,
            lambda prev, idx: OwnerChanged(self.identity, owner, prev, block, idx),
        )

    # RegistryReader
    def changed(self, identity: str) -> int:
        return self.changed_at if identity == self.identity else 0

    def logs(self, identity: str, block_number: int) -> list[RegistryEvent]:
        self.log_calls.append(block_number)
        return list(self.by_block.get(block_number, []))

    def identity_owner(self, identity: str) -> str:
        return self.owner


class AsyncFakeRegistry:
    def __init__(self, inner: FakeRegistry) -> None:
        self.inner = inner

    async def changed(self, identity: str) -> int:
        return self.inner.changed(identity)

    async def logs(self, identity: str, block_number: int) -> list[RegistryEvent]:
        return self.inner.logs(identity, block_number)

    async def identity_owner(self, identity: str) -> str:
        return self.inner.identity_owner(identity)


def svc(service_id: str, sha: str, cid: str = "Qm") -> bytes:
    return service_value(service_id=service_id, cid=cid, token_sha256=sha)


def resolve(registry: FakeRegistry, now: Any = NOW) -> dict[str, Any]:
    return resolve_did_document(DOC_ID, registry, now=now)


def test_empty_identity_has_only_the_owner_key():
    doc = resolve(FakeRegistry())
    assert doc == {
        "@context": "https://www.w3.org/ns/did/v1",
        "id": DOC_ID,
        "publicKey": [
            {
                "id": DOC_ID + "#owner",
                "type": "Secp256k1VerificationKey2018",
                "controller": DOC_ID,
                "ethereumAddress": IDENTITY,
            }
        ],
        "authentication": [
            {
                "type": "Secp256k1SignatureAuthentication2018",
                "publicKey": DOC_ID + "#owner",
            }
        ],
        "service": [],
    }


def test_service_values_are_json_objects_and_findable_by_hash():
    registry = FakeRegistry()
    registry.set_attribute(
        10, V["service_value"]["json"].encode(), NOW + VALIDITY_FOREVER
    )
    doc = resolve(registry)
    assert doc["service"] == [json.loads(V["service_value"]["json"])]
    sha = V["issued_token"]["sha256_hex"]
    assert find_service_by_hash(doc, sha) == json.loads(V["service_value"]["json"])
    assert find_service_by_hash(doc, "0x" + sha.upper()) is not None
    assert find_service_by_hash(doc, H1) is None


def test_overwrite_by_id_newest_wins():
    registry = FakeRegistry()
    registry.set_attribute(10, svc("a", H1, "QmOld"), NOW + 100)
    registry.set_attribute(12, svc("b", H2), NOW + 100)
    registry.set_attribute(15, svc("a", H3, "QmNew"), NOW + 100)
    doc = resolve(registry)
    assert [(s["id"], s["hash"]) for s in doc["service"]] == [("b", H2), ("a", H3)]
    assert find_service_by_hash(doc, H1) is None
    assert registry.log_calls == [15, 12, 10]


def test_revocation_with_valid_to_zero_removes_the_entry():
    registry = FakeRegistry()
    registry.set_attribute(10, svc("a", H1), NOW + 100)
    registry.set_attribute(11, svc("b", H2), NOW + 100)
    registry.set_attribute(20, svc("a", H1), 0)
    doc = resolve(registry)
    assert [s["id"] for s in doc["service"]] == ["b"]


def test_expired_entries_are_dropped_at_resolution_time():
    registry = FakeRegistry()
    registry.set_attribute(10, svc("a", H1), NOW + 60)
    registry.set_attribute(11, svc("b", H2), NOW)
    assert [s["id"] for s in resolve(registry, now=NOW - 1)["service"]] == ["a", "b"]
    assert [s["id"] for s in resolve(registry, now=NOW)["service"]] == ["a"]
    later = datetime.fromtimestamp(NOW + 60, tz=UTC)
    assert resolve(registry, now=later)["service"] == []


def test_two_changes_in_one_block_are_both_seen():
    registry = FakeRegistry()
    registry.set_attribute(5, svc("old", H3), NOW + 100)
    first = registry.set_attribute(9, svc("a", H1), NOW + 100)
    second = registry.set_attribute(9, svc("b", H2), NOW + 100)
    # the registry's bookkeeping: the second change points at its own block
    assert (first.previous_change, second.previous_change) == (5, 9)
    doc = resolve(registry)
    assert sorted(s["id"] for s in doc["service"]) == ["a", "b", "old"]
    assert registry.log_calls == [9, 5]


def test_two_changes_of_one_id_in_one_block_later_log_wins():
    registry = FakeRegistry()
    registry.set_attribute(9, svc("a", H1), NOW + 100)
    registry.set_attribute(9, svc("a", H2), NOW + 100)
    assert [s["hash"] for s in resolve(registry)["service"]] == [H2]
    registry.set_attribute(9, svc("a", H2), 0)
    assert resolve(registry)["service"] == []


def test_owner_change_is_reflected_in_the_owner_key():
    registry = FakeRegistry()
    registry.set_attribute(3, svc("a", H1), NOW + 100)
    registry.change_owner(7, ISSUER["address"])
    doc = resolve(registry)
    assert doc["publicKey"][0]["ethereumAddress"] == ISSUER["address"]
    assert [s["id"] for s in doc["service"]] == ["a"]
    # the pure builder derives the owner from events when not told
    events = [e for block in registry.by_block.values() for e in block]
    assert (
        build_did_document(DOC_ID, events, now=NOW)["publicKey"][0]["ethereumAddress"]
        == ISSUER["address"]
    )
    assert (
        build_did_document(DOC_ID, events, owner=IDENTITY.lower(), now=NOW)[
            "publicKey"
        ][0]["ethereumAddress"]
        == IDENTITY
    )


def test_delegates_and_their_expiry_and_revocation():
    registry = FakeRegistry()
    registry.add_delegate(4, ISSUER["address"], NOW + 100)
    registry.add_delegate(5, "0x" + "ab" * 20, NOW + 100, kind="sigAuth")
    registry.add_delegate(6, "0x" + "cd" * 20, NOW - 1)
    doc = resolve(registry)
    keys = doc["publicKey"][1:]
    assert [k["type"] for k in keys] == ["veriKey", "sigAuth"]
    assert keys[0]["ethereumAddress"] == ISSUER["address"]
    assert doc["authentication"][1]["publicKey"] == keys[1]["id"]
    # the resolved document makes the delegate's signature acceptable
    assert verify_token(V["issued_token"]["token"], DOC_ID, did_document=doc)
    registry.add_delegate(8, ISSUER["address"].lower(), 0)
    assert [k["type"] for k in resolve(registry)["publicKey"][1:]] == ["sigAuth"]


def test_public_key_attributes():
    registry = FakeRegistry()
    registry.set_attribute(
        3,
        b"\x02" + b"\x11" * 32,
        NOW + 100,
        name=attribute_name("did/pub/Secp256k1/veriKey/hex"),
    )
    registry.set_attribute(
        4, b"\x01\x02", NOW + 100, name=attribute_name("did/pub/Ed25519/veriKey/base64")
    )
    keys = resolve(registry)["publicKey"][1:]
    assert keys[0]["type"] == "Secp256k1veriKey"
    assert keys[0]["publicKeyHex"] == "02" + "11" * 32
    assert keys[1]["publicKeyBase64"] == "AQI="


def test_non_json_service_values_are_kept_like_the_reference_reader():
    registry = FakeRegistry()
    registry.set_attribute(
        3, b"https://example.com", NOW + 100, name=attribute_name("did/svc/HubService")
    )
    registry.set_attribute(4, b"\xff\xfe", NOW + 100, name=attribute_name("did/svc/x"))
    services = resolve(registry)["service"]
    assert services[0]["type"] == "HubService"
    assert services[0]["serviceEndpoint"] == "https://example.com"
    assert len(services) == 2


def test_other_identities_events_are_ignored():
    registry = FakeRegistry()
    registry.set_attribute(2, svc("old", H3), NOW + 100)
    registry.set_attribute(3, svc("mine", H1), NOW + 100)
    # a sloppy reader returning another identity's log of the same block
    registry.by_block[3].insert(
        0,
        AttributeChanged(ISSUER["address"], SVC, svc("theirs", H2), NOW + 100, 1, 3, 0),
    )
    assert [s["id"] for s in resolve(registry)["service"]] == ["old", "mine"]
    assert registry.log_calls == [3, 2]


def test_corrupt_previous_change_cannot_loop():
    registry = FakeRegistry()
    registry.by_block[10] = [
        AttributeChanged(IDENTITY, SVC, svc("a", H1), NOW + 1, 10, 10, 0)
    ]
    registry.by_block[11] = [
        AttributeChanged(IDENTITY, SVC, svc("b", H2), NOW + 1, 99, 11, 0)
    ]
    registry.changed_at = 10
    assert [s["id"] for s in resolve(registry)["service"]] == ["a"]
    assert registry.log_calls == [10]


def test_history_limit(monkeypatch):
    from evops.protocol import resolver

    monkeypatch.setattr(resolver, "MAX_HISTORY_BLOCKS", 3)
    registry = FakeRegistry()
    for block in range(1, 6):
        registry.set_attribute(block, svc(str(block), H1), NOW + 1)
    with pytest.raises(ProtocolError, match=resolver.ERR_HISTORY_TOO_LONG):
        resolve(registry)


async def test_async_resolution_matches_sync():
    registry = FakeRegistry()
    registry.set_attribute(10, svc("a", H1), NOW + 100)
    registry.set_attribute(10, svc("b", H2), NOW + 100)
    registry.change_owner(11, ISSUER["address"])
    registry.set_attribute(12, svc("a", H3), NOW + 100)
    sync_doc = resolve(registry)
    async_doc = await resolve_did_document_async(
        DID.parse(DOC_ID), AsyncFakeRegistry(registry), now=NOW
    )
    assert async_doc == sync_doc
    assert [s["hash"] for s in async_doc["service"]] == [H2, H3]


def test_builder_is_order_independent():
    registry = FakeRegistry()
    registry.set_attribute(1, svc("a", H1), NOW + 100)
    registry.set_attribute(2, svc("a", H2), NOW + 100)
    registry.set_attribute(2, svc("b", H3), 0)
    events = [e for block in registry.by_block.values() for e in block]
    forward = build_did_document(DOC_ID, events, now=NOW)
    backward = build_did_document(DOC_ID, list(reversed(events)), now=NOW)
    assert forward == backward
    assert [s["hash"] for s in forward["service"]] == [H2]


def test_find_service_for_claim():
    cache_doc: dict[str, Any] = {
        "service": [
            {"id": "x", "claimType": "role.a", "claimTypeVersion": "1", "hash": H1},
            {"id": "y", "claimType": "role.a", "claimTypeVersion": 2, "hash": H2},
            "garbage",
        ]
    }
    assert find_service_for_claim(cache_doc, "role.a", 1) == cache_doc["service"][0]
    assert find_service_for_claim(cache_doc, "role.a", 2) == cache_doc["service"][1]
    assert find_service_for_claim(cache_doc, "role.b", 1) is None
    chain_doc = {"service": [{"id": "z", "hash": H3}]}
    assert find_service_for_claim(chain_doc, "role.a", 1) is None
    assert find_service_for_claim(
        chain_doc, "role.a", 1, claims_by_hash={H3: ("role.a", 1)}
    ) == {"id": "z", "hash": H3}
    assert find_service_for_claim({"service": "nope"}, "role.a", 1) is None
