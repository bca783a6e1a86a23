"""Resolving many DID documents at once (`resolve_did_documents_async`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from evops.protocol.dids import DID
from evops.protocol.resolver import (
    RegistryEvent,
    RegistryHistoryCache,
    resolve_did_document,
    resolve_did_documents_async,
)
from evops.protocol.tests.test_resolver import H1, H2, H3, NOW, FakeRegistry, svc
from evops.protocol.tests.vectors import ISSUER


class BatchFakeRegistry:
    """Several `FakeRegistry` identities behind the batched reader, counting calls."""

    def __init__(self, *registries: FakeRegistry) -> None:
        self.by_identity = {r.identity: r for r in registries}
        self.calls: list[tuple[str, int]] = []

    async def changed_many(self, identities: Sequence[str]) -> list[int]:
        self.calls.append(("changed", len(identities)))
        return [self.by_identity[i].changed(i) for i in identities]

    async def logs_many(
        self, queries: Sequence[tuple[str, int]]
    ) -> list[list[RegistryEvent]]:
        self.calls.append(("logs", len(queries)))
        return [self.by_identity[i].logs(i, block) for i, block in queries]

    async def identity_owners(self, identities: Sequence[str]) -> list[str]:
        self.calls.append(("owner", len(identities)))
        return [self.by_identity[i].identity_owner(i) for i in identities]


def _did(registry: FakeRegistry) -> str:
    return DID.for_address(registry.identity).canonical


def _fleet() -> list[FakeRegistry]:
    a = FakeRegistry(ISSUER["address"])
    a.set_attribute(10, svc("a", H1), NOW + 100)
    a.set_attribute(10, svc("b", H2), NOW + 100)
    a.set_attribute(14, svc("a", H3), NOW + 100)
    b = FakeRegistry()
    b.set_attribute(12, svc("c", H2), NOW + 100)
    b.change_owner(13, ISSUER["address"])
    empty = FakeRegistry(DID.for_address("0x" + "ab" * 20).address)
    return [a, b, empty]


async def test_many_documents_match_one_at_a_time_level_by_level():
    fleet = _fleet()
    reader = BatchFakeRegistry(*fleet)
    documents = await resolve_did_documents_async(
        [_did(r) for r in fleet] + [_did(fleet[0])], reader, now=NOW
    )
    assert documents == {
        _did(r): resolve_did_document(_did(r), r, now=NOW) for r in fleet
    }
    # one call per level of history for all identities, not per identity
    assert reader.calls == [
        ("changed", 3),
        ("logs", 2),  # a@14, b@13
        ("logs", 2),  # a@10, b@12
        ("owner", 3),
    ]


async def test_a_cached_history_is_reused_until_changed_moves():
    fleet = _fleet()
    reader = BatchFakeRegistry(*fleet)
    cache = RegistryHistoryCache(10)
    dids = [_did(r) for r in fleet]
    first = await resolve_did_documents_async(dids, reader, now=NOW, cache=cache)
    reader.calls.clear()
    again = await resolve_did_documents_async(dids, reader, now=NOW, cache=cache)
    assert again == first
    assert reader.calls == [("changed", 3)]

    # A new change (here a revocation) moves `changed`: that identity is read again.
    fleet[1].set_attribute(20, svc("c", H2), 0)
    reader.calls.clear()
    revoked = await resolve_did_documents_async(dids, reader, now=NOW, cache=cache)
    assert revoked[_did(fleet[1])]["service"] == []
    assert revoked[_did(fleet[0])] == first[_did(fleet[0])]
    # b's history is three blocks deep now (20, 13, 12)
    walk = [("logs", 1)] * 3
    assert reader.calls == [("changed", 3), *walk, ("owner", 1)]


async def test_validity_is_judged_at_each_build_from_the_cache():
    registry = FakeRegistry()
    registry.set_attribute(10, svc("a", H1), NOW + 60)
    reader = BatchFakeRegistry(registry)
    cache = RegistryHistoryCache(10)
    did = _did(registry)
    now = await resolve_did_documents_async([did], reader, now=NOW, cache=cache)
    assert [s["id"] for s in now[did]["service"]] == ["a"]
    later = datetime.fromtimestamp(NOW + 60, tz=UTC)
    expired = await resolve_did_documents_async([did], reader, now=later, cache=cache)
    assert expired[did]["service"] == []
    assert reader.calls[-1] == ("changed", 1)  # from the cache


async def test_histories_above_the_settled_block_are_not_kept():
    fleet = _fleet()
    reader = BatchFakeRegistry(*fleet)
    cache = RegistryHistoryCache(10)
    dids = [_did(r) for r in fleet]
    await resolve_did_documents_async(
        dids, reader, now=NOW, cache=cache, settled_block=13
    )
    # a (changed at 14) is too recent; b (13) and the empty identity are kept
    assert len(cache) == 2
    reader.calls.clear()
    await resolve_did_documents_async(dids, reader, now=NOW, cache=cache)
    assert reader.calls == [("changed", 3), ("logs", 1), ("logs", 1), ("owner", 1)]


def test_the_cache_keeps_the_most_recently_used():
    cache = RegistryHistoryCache(2)
    fleet = _fleet()
    from evops.protocol.resolver import RegistryHistory

    for registry in fleet:
        cache.put(registry.identity, RegistryHistory(1, (), registry.identity))
    assert len(cache) == 2
    assert cache.get(fleet[0].identity, 1) is None
    assert cache.get(fleet[2].identity, 1) is not None
    assert cache.get(fleet[2].identity, 2) is None  # changed since
    assert len(RegistryHistoryCache(0)) == 0
