"""`collector_tuned`: the listener's GC settings, counted across overlapping users."""

from __future__ import annotations

import gc

from claims.collector import LISTENER_THRESHOLDS, collector_tuned, holders


def test_tuned_inside_and_restored_after_the_last_one_leaves():
    outside, frozen, count = gc.get_threshold(), gc.get_freeze_count(), holders()
    with collector_tuned():
        assert gc.get_threshold() == LISTENER_THRESHOLDS
        assert gc.get_freeze_count() > frozen
        with collector_tuned():  # a second listener in the same process
            assert holders() == count + 2
        # The first is still running: still tuned and frozen.
        assert gc.get_threshold() == LISTENER_THRESHOLDS
        assert gc.get_freeze_count() > frozen
    assert holders() == count
    if count == 0:
        assert gc.get_threshold() == outside
        assert gc.get_freeze_count() == 0


def test_restored_when_the_block_raises():
    outside, count = gc.get_threshold(), holders()
    try:
        with collector_tuned():
            raise RuntimeError("listener crashed")
    except RuntimeError:
        pass
    assert holders() == count
    if count == 0:
        assert gc.get_threshold() == outside
