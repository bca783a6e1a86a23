"""One measured speed-up of django-unfold 0.91's change lists.

Unfold renders each list cell with its column's header (for the narrow-screen
layout) and recomputes every header of the list for every row: 100 rows x 7 columns
rebuilt sorting links 700 times, about 40 % of the claim list's time at 100,000
claims (bench/admin.py). The headers depend on the change list only, so they are
computed once per change list here. Checked against the pinned version: a newer
unfold must be re-measured (`UNFOLD_VERSION`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

UNFOLD_VERSION = "0.91.0"
_CACHE_ATTRIBUTE = "_evops_result_headers"


def install() -> None:
    """Memoize unfold's `result_headers` per ChangeList (idempotent)."""
    from importlib.metadata import version

    from unfold.templatetags import unfold_list

    if version("django-unfold") != UNFOLD_VERSION:
        return
    original = unfold_list.result_headers
    if getattr(original, "evops_memoized", False):
        return

    def result_headers(cl: Any) -> Iterator[dict[str, Any]]:
        cached = getattr(cl, _CACHE_ATTRIBUTE, None)
        if cached is None:
            cached = list(original(cl))
            setattr(cl, _CACHE_ATTRIBUTE, cached)
        return iter(cached)

    result_headers.evops_memoized = True  # type: ignore[attr-defined]
    unfold_list.result_headers = result_headers
