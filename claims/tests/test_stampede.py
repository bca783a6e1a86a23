"""Cache stampedes: a burst that misses one cached value together fetches it once."""

from __future__ import annotations

import asyncio

import pytest

from claims import peer_calls
from claims.tests.fakes import ROLE

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def test_a_burst_fetches_the_role_definition_once(make_asset, fakes):
    integrations, cache, _store, _chain = fakes
    assets = [await asyncio.to_thread(make_asset) for _ in range(50)]
    fetched = 0
    release = asyncio.Event()
    original = cache.role

    async def slow_role(signer, did, namespace):
        nonlocal fetched
        fetched += 1
        await release.wait()  # every worker misses while the first fetch is out
        return await original(signer, did, namespace)

    cache.role = slow_role

    async def release_when_all_missed() -> None:
        # gather starts the tasks in order: by now every one has missed and joined.
        release.set()

    *results, _ = await asyncio.gather(
        *(peer_calls.role_definition(integrations, asset, ROLE) for asset in assets),
        release_when_all_missed(),
    )
    assert fetched == 1
    roles = [role for role in results if role is not None]
    assert len(roles) == 50
    assert {role.namespace for role in roles} == {ROLE}
    # Cached afterwards: no flight, no fetch.
    await peer_calls.role_definition(integrations, assets[0], ROLE)
    assert fetched == 1


async def test_a_failed_shared_fetch_fails_every_waiter_and_is_retried(
    make_asset, fakes
):
    integrations, cache, _store, _chain = fakes
    asset = await asyncio.to_thread(make_asset)
    release = asyncio.Event()
    original = cache.role
    attempts = 0

    async def failing_once(signer, did, namespace):
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await release.wait()
            raise ConnectionError("hub down")
        return await original(signer, did, namespace)

    cache.role = failing_once

    async def release_when_all_missed() -> None:
        release.set()

    *results, _ = await asyncio.gather(
        *(peer_calls.role_definition(integrations, asset, ROLE) for _ in range(10)),
        release_when_all_missed(),
        return_exceptions=True,
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    assert attempts == 1
    role = await peer_calls.role_definition(integrations, asset, ROLE)
    assert role.namespace == ROLE
    assert attempts == 2
