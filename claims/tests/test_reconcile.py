"""Reconciliation by pages: what evops knows read per page, documents read together."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from claims import reconcile
from claims.models import RECONCILER, ClaimEvent, ClaimRecord, ClaimStatus
from claims.tests.fakes import FakeError

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def _issued(asset, integrations, cache) -> str:
    """A claim of `asset` accepted at the cache server (evops never saw the notice)."""
    signer = integrations.signer_for(asset)
    role = await cache.role(None, None, "r")
    result = await cache.request_claim(signer, asset.did, role=role)
    claim_id = str(result.claim_id)
    cache.issue(claim_id)
    return claim_id


async def test_the_fleet_is_reconciled_page_by_page(make_asset, fakes, monkeypatch):
    monkeypatch.setattr(reconcile, "PAGE_SIZE", 2)
    integrations, cache, _, chain = fakes
    assets = [await sync_to_async(make_asset)() for _ in range(5)]
    inactive = await sync_to_async(make_asset)(active=False)
    for asset in (assets[1], assets[4], inactive):
        await _issued(asset, integrations, cache)
    result = await reconcile.reconcile_active_assets(
        integrations=integrations, actor=RECONCILER, concurrency=3
    )
    assert (result.assets, result.published, result.errors) == (5, 2, [])
    assert sorted(did for did, _ in chain.writes) == sorted(
        assets[i].address for i in (1, 4)
    )
    # Documents are read only for the assets holding a credential.
    assert set(chain.resolved) == {assets[i].did for i in (1, 4)}

    again = await reconcile.reconcile_active_assets(
        integrations=integrations, actor=RECONCILER, concurrency=3
    )
    assert (again.assets, again.published, again.already_present) == (5, 0, 2)
    assert len(chain.writes) == 2


async def test_a_published_claim_found_again_writes_nothing(make_asset, fakes):
    integrations, cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    claim_id = await _issued(asset, integrations, cache)
    await reconcile.reconcile_assets(
        assets=[asset], integrations=integrations, actor=RECONCILER, concurrency=1
    )
    record = await ClaimRecord.objects.aget(claim_id=claim_id)
    assert record.status == ClaimStatus.PUBLISHED
    events = await ClaimEvent.objects.filter(record=record).acount()
    again = await reconcile.reconcile_assets(
        assets=[asset], integrations=integrations, actor=RECONCILER, concurrency=1
    )
    assert again.already_present == 1
    assert await ClaimEvent.objects.filter(record=record).acount() == events


async def test_a_published_claim_missing_from_chain_is_written_again(make_asset, fakes):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    await _issued(asset, integrations, cache)
    await reconcile.reconcile_assets(
        assets=[asset], integrations=integrations, actor=RECONCILER, concurrency=1
    )
    chain.documents.clear()  # the entry is gone from the document
    result = await reconcile.reconcile_assets(
        assets=[asset], integrations=integrations, actor=RECONCILER, concurrency=1
    )
    assert result.already_present == 0
    assert result.errors == []
    assert result.published + result.pending == 1


async def test_documents_that_cannot_be_read_are_each_assets_error(make_asset, fakes):
    integrations, cache, _, chain = fakes
    holding = [await sync_to_async(make_asset)() for _ in range(2)]
    idle = await sync_to_async(make_asset)()
    for asset in holding:
        await _issued(asset, integrations, cache)
    chain.fail_resolve = [FakeError("rpc down", permanent=False)]
    result = await reconcile.reconcile_assets(
        assets=[*holding, idle],
        integrations=integrations,
        actor=RECONCILER,
        concurrency=2,
    )
    assert result.assets == 3
    expected = sorted(f"{a.did}: FakeError: rpc down" for a in holding)
    assert sorted(result.errors) == expected
    assert chain.writes == []
    # Nothing was lost: the next pass publishes both.
    again = await reconcile.reconcile_assets(
        assets=[*holding, idle],
        integrations=integrations,
        actor=RECONCILER,
        concurrency=2,
    )
    assert (again.published, again.errors) == (2, [])
