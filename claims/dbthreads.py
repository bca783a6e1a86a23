"""A bounded pool of database threads for the listener's pipeline.

`sync_to_async` runs every call on asgiref's one thread-sensitive thread, so all the
listener's workers queued behind each other for the database: every inbox row, lease,
transition and event was a serial PostgreSQL round trip. The listener instead runs
its pipeline's database calls on `DatabaseThreads`, a small pool of threads, each
with its own connection, so round trips of different messages overlap. Nothing about
a single call changes: each service function still runs whole in one thread (its
transaction, its CAS, its `SKIP LOCKED` lease), so the guarantees are the same.

The pipeline does not know which pool it runs on: it calls `db(fn)(...)`, which uses
the pool set for the current task (`using(pool)`) and otherwise `sync_to_async` as
before (the console, the commands and the tests calling a step directly). A pool
built with `batched` (the listener's: `claims.batches.BATCHED`) sends the calls of
those single-row functions through `Coalesced`, which gathers the same write of many
tasks into one call; keyword arguments only.

Each thread's connection is closed when the pool is closed (`aclose`, at listener
shutdown): a connection left open would keep a test database from being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, Generic, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from cachetools import LRUCache
from django.db import close_old_connections, connections

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_CLOSE_TIMEOUT = 30.0
# Coroutine wrappers a pool keeps (the pipeline calls a few dozen functions).
_WRAPPED_KEPT = 256

_current: ContextVar[DatabaseThreads | None] = ContextVar(
    "claims_database_threads", default=None
)


class DatabaseThreads:
    """`size` threads, each with its own database connection, for sync ORM calls."""

    def __init__(
        self,
        size: int,
        *,
        name: str = "evops-db",
        batched: Mapping[Callable[..., Any], Callable[[list[Any]], list[Any]]]
        | None = None,
    ) -> None:
        self.size = max(1, int(size))
        # Single-row functions whose concurrent calls share one many-row call.
        self._batched: dict[Callable[..., Any], Coalesced[Any, Any]] = {
            single: Coalesced(many) for single, many in (batched or {}).items()
        }
        self._wrapped: LRUCache[Callable[..., Any], Callable[..., Awaitable[Any]]] = (
            LRUCache(maxsize=_WRAPPED_KEPT)
        )
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._executor = ThreadPoolExecutor(
            max_workers=self.size, thread_name_prefix=name, initializer=self._started
        )
        self.closed = False

    def _started(self) -> None:
        with self._lock:
            self._threads.append(threading.current_thread())

    def wrap(self, fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
        """`fn` as a coroutine function running on one of the pool's threads.

        Built once per function (building one inspects and copies the function: a
        few per cent of a burst's CPU when done for every call) and kept in a small
        LRU, so functions made per call (lambdas, partials) cannot grow it.
        """
        if self.closed:
            raise RuntimeError("the database threads are closed")
        with self._lock:
            wrapped = self._wrapped.get(fn)
        if wrapped is None:
            wrapped = sync_to_async(
                _with_fresh_connection(fn),
                thread_sensitive=False,
                executor=self._executor,
            )
            with self._lock:
                self._wrapped[fn] = wrapped
        return wrapped

    def batched(self, fn: Callable[..., R]) -> Callable[..., Awaitable[R]] | None:
        """`fn`'s calls gathered with other tasks' into one many-row call, if set."""
        coalesced = self._batched.get(fn)
        if coalesced is None:
            return None

        async def call(**kwargs: Any) -> R:
            result: R = await coalesced(kwargs)
            return result

        return call

    def close(self) -> None:
        """Close every thread's connection, then stop the threads (blocking).

        One close task per thread: each waits at a barrier after closing, so no
        thread can take a second one and every thread closes its own connection.
        """
        if self.closed:
            return
        self.closed = True
        with self._lock:
            count = len(self._threads)
        if count:
            barrier = threading.Barrier(count)
            futures = [self._executor.submit(_close_own, barrier) for _ in range(count)]
            for future in futures:
                with contextlib.suppress(Exception):
                    future.result(timeout=_CLOSE_TIMEOUT)
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)


def _with_fresh_connection(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        # As Django does around a request: drop a connection that broke or aged out.
        close_old_connections()
        return fn(*args, **kwargs)

    return call


def _close_own(barrier: threading.Barrier) -> None:
    connections.close_all()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=_CLOSE_TIMEOUT)


class Coalesced(Generic[T, R]):
    """One database call for the same write made by many tasks at the same time.

    `many(items)` does for a list what the single call does for one item and returns
    one result per item, in order. A task awaits `coalesced(item)`; items that
    arrive while a call is running go into the next one, so a lone item waits for
    nothing extra and a burst of workers shares a few database calls and commits
    (a database's group commit, in the application). One call runs at a time per
    event loop, at most `max_batch` items each; an exception from the call is every
    one of its items' exception.
    """

    def __init__(self, many: Callable[[list[T]], list[R]], *, max_batch: int = 100):
        self._many = many
        self._max_batch = max_batch
        self._state: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, _CoalescedState[T, R]
        ] = weakref.WeakKeyDictionary()

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        state = self._state.get(loop)
        if state is None:
            state = self._state[loop] = _CoalescedState()
        future: asyncio.Future[R] = loop.create_future()
        state.queue.append((item, future))
        if state.runner is None or state.runner.done():
            # Runs in this task's context: the database threads it uses, too.
            state.runner = asyncio.create_task(self._run(state))
        return await future

    async def _run(self, state: _CoalescedState[T, R]) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            await asyncio.sleep(0)  # let the tasks ready now add their items first
            while state.queue:
                batch = state.queue[: self._max_batch]
                del state.queue[: self._max_batch]
                try:
                    results = await db(self._many)([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"{self._many.__name__} lost results")
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            # Cancelled (the loop is closing): nobody may wait forever.
            for _, future in (*batch, *state.queue):
                future.cancel()


class _CoalescedState(Generic[T, R]):
    def __init__(self) -> None:
        self.queue: list[tuple[T, asyncio.Future[R]]] = []
        self.runner: asyncio.Task[None] | None = None


def db(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`fn` as a coroutine function: on the current task's pool, or `sync_to_async`."""
    pool = _current.get()
    if pool is None or pool.closed:
        return sync_to_async(fn)
    batched = pool.batched(fn)
    if batched is not None:
        return batched
    return pool.wrap(fn)


@contextlib.contextmanager
def using(pool: DatabaseThreads | None) -> Iterator[None]:
    """Run the pipeline steps called inside on `pool` (this task and its children)."""
    token = _current.set(pool)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> DatabaseThreads | None:
    return _current.get()


__all__ = ["Coalesced", "DatabaseThreads", "current", "db", "using"]
