"""A row held by another transaction, for the tests of SKIP LOCKED paths."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from django.db import DatabaseError, connections, models, transaction


@contextlib.contextmanager
def row_held(model: type[models.Model], pk: int) -> Iterator[None]:
    """Row `pk` of `model` locked `FOR UPDATE` by another transaction (its own
    thread and connection) while the block runs; released and committed after."""
    locked, release = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                model._default_manager.select_for_update().get(pk=pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    worker = threading.Thread(target=holder)
    worker.start()
    try:
        assert locked.wait(10), "the row was not locked within 10 s"
        yield
    finally:
        release.set()
        worker.join(30)


def locked_elsewhere(model: type[models.Model], pk: int) -> bool:
    """Whether another transaction (its own thread and connection) finds row `pk`
    of `model` locked: its `SELECT ... FOR UPDATE NOWAIT` is refused."""
    refused: list[bool] = []

    def probe() -> None:
        try:
            with transaction.atomic():
                model._default_manager.select_for_update(nowait=True).get(pk=pk)
            refused.append(False)
        except DatabaseError:
            refused.append(True)
        finally:
            connections.close_all()

    worker = threading.Thread(target=probe)
    worker.start()
    worker.join(30)
    assert refused, "the probe did not finish within 30 s"
    return refused[0]
