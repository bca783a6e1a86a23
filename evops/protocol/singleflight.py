"""Single-flight: concurrent misses for one key share one fetch.

A cache in front of a slow peer stampedes under a burst: a hundred workers miss the
same key at the same moment and each fetches it (a role definition was fetched 100
times instead of once when a burst of prequalification requests arrived). With
`SingleFlight.run`, the first miss starts the fetch and every concurrent caller for
the same key awaits that one result (or its exception). Nothing is cached here:
the caller keeps its own cache and calls `run` on a miss.

The fetch runs as its own task, so one waiter being cancelled (a worker timing out)
does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one fetch in flight per key; concurrent callers share it."""

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[V]] = {}
        self.fetches = 0  # how many fetches actually ran (for tests and metrics)

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        task = self._flights.get(key)
        if task is None:
            self.fetches += 1
            task = asyncio.ensure_future(fetch())
            self._flights[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning if unawaited
