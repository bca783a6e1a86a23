"""The listener's database threads and its coalesced writes (claims/dbthreads.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from claims import dbthreads
from claims.dbthreads import Coalesced, DatabaseThreads, db, using

pytestmark = pytest.mark.asyncio


class Recorder:
    """A `many` function that records each call's items, on whichever thread."""

    def __init__(self, fail_on: object = None) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in items:
            raise RuntimeError(f"item {self.fail_on} broke the call")
        return [item * 10 for item in items]


async def test_a_burst_shares_calls_and_each_gets_its_own_result():
    many = Recorder()
    coalesced = Coalesced(many)
    results = await asyncio.gather(*(coalesced(n) for n in range(50)))
    assert results == [n * 10 for n in range(50)]
    assert sorted(item for call in many.calls for item in call) == list(range(50))
    assert len(many.calls) < 5  # 50 writers, a handful of database calls


async def test_a_lone_item_is_written_without_waiting_for_company():
    many = Recorder()
    coalesced = Coalesced(many)
    assert await asyncio.wait_for(coalesced(7), timeout=5) == 70
    assert many.calls == [[7]]


async def test_batches_are_capped():
    many = Recorder()
    coalesced = Coalesced(many, max_batch=8)
    assert await asyncio.gather(*(coalesced(n) for n in range(20))) == [
        n * 10 for n in range(20)
    ]
    assert max(len(call) for call in many.calls) <= 8
    assert len(many.calls) >= 3


async def test_a_failed_call_fails_its_items_and_the_next_call_runs():
    many = Recorder(fail_on=3)
    coalesced = Coalesced(many, max_batch=5)
    results = await asyncio.gather(
        *(coalesced(n) for n in range(10)), return_exceptions=True
    )
    failed = [n for n, r in enumerate(results) if isinstance(r, RuntimeError)]
    assert failed == [0, 1, 2, 3, 4]
    assert str(results[0]) == "item 3 broke the call"
    assert results[5:] == [n * 10 for n in range(5, 10)]
    assert await coalesced(11) == 110


async def test_a_many_function_that_loses_results_is_an_error_not_a_hang():
    def lossy(items: list[int]) -> list[int]:
        return items[:-1]

    coalesced = Coalesced(lossy)
    results = await asyncio.wait_for(
        asyncio.gather(coalesced(1), coalesced(2), return_exceptions=True), timeout=5
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert "lost results" in str(results[0])


async def test_calls_run_on_the_database_threads_of_the_caller():
    many = Recorder()
    coalesced = Coalesced(many)
    pool = DatabaseThreads(2, name="evops-db-test")
    try:
        with using(pool):
            assert await coalesced(1) == 10
            assert await db(threading.current_thread)() is not None
    finally:
        await pool.aclose()
    assert {name.split("_")[0] for name in many.threads} == {"evops-db-test"}
    with pytest.raises(RuntimeError):
        pool.wrap(len)


async def test_a_cancelled_writer_does_not_strand_the_others():
    started, release = threading.Event(), threading.Event()

    def slow(items: list[int]) -> list[int]:
        started.set()
        release.wait(5)
        return items

    coalesced = Coalesced(slow)
    first = asyncio.ensure_future(coalesced(1))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    second = asyncio.ensure_future(coalesced(2))  # queued behind the running call
    first.cancel()
    release.set()
    assert await asyncio.wait_for(second, timeout=5) == 2
    assert first.cancelled()


async def test_writers_are_not_left_waiting_when_the_call_is_cancelled():
    """At loop shutdown the running call is cancelled: its waiters end, not hang."""
    started, release = threading.Event(), threading.Event()

    def slow(items: list[int]) -> list[int]:
        started.set()
        release.wait(5)
        return items

    coalesced = Coalesced(slow)
    first = asyncio.ensure_future(coalesced(1))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    second = asyncio.ensure_future(coalesced(2))  # queued for the next call
    runner = coalesced._state[asyncio.get_running_loop()].runner
    assert runner is not None
    runner.cancel()
    results = await asyncio.wait_for(
        asyncio.gather(first, second, return_exceptions=True), timeout=5
    )
    release.set()
    assert all(isinstance(r, asyncio.CancelledError) for r in results)


async def test_a_function_is_wrapped_once_and_wrappers_kept_are_bounded():
    pool = DatabaseThreads(2, name="test-wrap")
    try:

        def double(n: int) -> int:
            return n * 2

        first = pool.wrap(double)
        assert pool.wrap(double) is first  # built once, not per call
        assert await first(4) == 8
        # Functions made per call (lambdas) run, and cannot grow what is kept.
        for n in range(dbthreads._WRAPPED_KEPT + 50):
            assert await pool.wrap(lambda n=n: n + 1)() == n + 1
        assert len(pool._wrapped) == dbthreads._WRAPPED_KEPT
        assert await pool.wrap(Recorder())([1, 2]) == [10, 20]
    finally:
        await pool.aclose()
