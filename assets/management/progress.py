"""Progress bars for the asset commands: tqdm on the command's stderr stream."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.management.base import OutputWrapper
from tqdm import tqdm

from assets.services import Progress

# Below this many items a run is quick enough that a bar is only noise.
MIN_ITEMS = 200


def tqdm_progress(stderr: OutputWrapper, *, enabled: bool = True) -> Progress:
    """A `Progress` drawing a tqdm bar on `stderr` for long runs."""
    # OutputWrapper appends a newline to every write, which breaks tqdm's carriage
    # returns; draw on the stream underneath it.
    stream = getattr(stderr, "_out", stderr)

    def wrap(items: Iterable[Any], total: int, description: str) -> Iterable[Any]:
        if not enabled or total < MIN_ITEMS:
            return items
        bar: Iterable[Any] = tqdm(
            items, total=total, desc=description, file=stream, leave=False
        )
        return bar

    return wrap
