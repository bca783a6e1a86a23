"""SingleFlight: concurrent misses share one fetch; errors and cancels do not stick."""

from __future__ import annotations

import asyncio
import functools

import pytest

from evops.protocol.singleflight import SingleFlight

pytestmark = pytest.mark.asyncio


async def test_concurrent_callers_share_one_fetch_per_key():
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()
    calls: list[str] = []

    async def fetch(key: str) -> int:
        calls.append(key)
        await release.wait()
        return len(key)

    async def release_after_all_joined() -> int:
        release.set()
        return 0

    results = await asyncio.gather(
        *(flights.run(key, functools.partial(fetch, key)) for key in ["a", "bb"] * 20),
        release_after_all_joined(),
    )
    assert results[:-1] == [1, 2] * 20
    assert sorted(calls) == ["a", "bb"]
    assert flights.fetches == 2
    assert len(flights) == 0  # nothing kept once done: the caller caches


async def test_a_cancelled_waiter_does_not_cancel_the_fetch_for_the_others():
    flights: SingleFlight[str, str] = SingleFlight()
    release = asyncio.Event()

    async def fetch() -> str:
        await release.wait()
        return "value"

    first = asyncio.create_task(flights.run("k", fetch))
    second = asyncio.create_task(flights.run("k", fetch))
    await asyncio.sleep(0)  # one step each: both now await the shared fetch
    assert len(flights) == 1 and flights.fetches == 1
    first.cancel()
    release.set()
    assert await second == "value"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_an_error_reaches_every_waiter_and_the_next_call_fetches_again():
    flights: SingleFlight[str, str] = SingleFlight()
    release = asyncio.Event()
    attempts = 0

    async def fetch() -> str:
        nonlocal attempts
        attempts += 1
        await release.wait()
        if attempts == 1:
            raise TimeoutError("peer timed out")
        return "ok"

    async def release_after_all_joined() -> None:
        release.set()

    *results, _ = await asyncio.gather(
        *(flights.run("k", fetch) for _ in range(5)),
        release_after_all_joined(),
        return_exceptions=True,
    )
    assert all(isinstance(r, TimeoutError) for r in results)
    assert await flights.run("k", fetch) == "ok"
    assert attempts == 2
