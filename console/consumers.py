"""The console's websocket: staff only, relays claim changes to the browser.

With the in-memory channel layer, changes made by another process (the listener)
never reach this one through the layer, so the consumer also checks the claim
history on each tick and relays events it had not seen. With channels-redis the
layer carries them (see `evops.channel_layer` for the read timeout that keeps an
idle socket alive) and the tick only sends a keepalive now and then, so proxies do
not close a quiet socket.

Structure for what runs on a timer: `tick()` runs every `CONSOLE_POLL_SECONDS`
(at least every `KEEPALIVE_SECONDS`), and `_allowed(user)` is the one access check,
called on connect; a subclass (or a later change) can re-check it on each tick and
close with `CLOSE_FORBIDDEN` when the session ended or the user lost access.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from console import live

log = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
CLOSE_SESSION_ENDED = 4401
KEEPALIVE_SECONDS = 25.0
_POLL_BATCH = 50


def _last_event_id() -> int:
    from claims.models import ClaimEvent

    return int(
        ClaimEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    )


def _events_after(after: int) -> list[tuple[int, int, str]]:
    from claims.models import ClaimEvent

    rows = (
        ClaimEvent.objects.filter(id__gt=after)
        .order_by("id")
        .values_list("id", "record_id", "record__status")[:_POLL_BATCH]
    )
    return [(int(i), int(r), str(s)) for i, r, s in rows]


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    """Joins `live.GROUP`; forwards `claim.changed` events as JSON."""

    _ticker: asyncio.Task[None] | None = None
    _watcher: asyncio.Task[None] | None = None
    _seen: int = 0
    _last_sent: float = 0.0

    def _allowed(self, user: Any) -> bool:
        """May this user watch the console? (Runs in a thread: it may query.)"""
        return bool(
            user is not None
            and user.is_active
            and user.is_staff
            and user.has_perm("claims.view_claimrecord")
        )

    def _relays_history(self) -> bool:
        # Only the in-memory layer misses other processes' changes.
        return not settings.CHANNEL_LAYER_URL

    def _tick_seconds(self) -> float:
        interval = float(settings.CONSOLE_POLL_SECONDS)
        return min(interval, KEEPALIVE_SECONDS) if interval > 0 else KEEPALIVE_SECONDS

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not await database_sync_to_async(self._allowed)(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.channel_layer.group_add(live.GROUP, self.channel_name)
        await self.accept()
        if self._relays_history() and float(settings.CONSOLE_POLL_SECONDS) > 0:
            self._seen = await database_sync_to_async(_last_event_id)()
        self._ticker = asyncio.create_task(self._tick_forever(self._tick_seconds()))
        self._watcher = asyncio.create_task(self._watch_session(user))

    async def _watch_session(self, user: Any) -> None:
        """Close the socket once the session ends or the user loses access
        (logout, sessions deleted, deactivated, staff or permission removed)."""
        from evops.security import websocket_access_ok

        session = self.scope.get("session")
        key = getattr(session, "session_key", None)
        check = database_sync_to_async(websocket_access_ok)
        while True:
            await asyncio.sleep(float(settings.CONSOLE_SESSION_CHECK_SECONDS))
            try:
                allowed = await check(key, getattr(user, "pk", None))
            except Exception as exc:
                log.warning("console session check failed: %s", exc)
                continue
            if not allowed:
                await self.channel_layer.group_discard(live.GROUP, self.channel_name)
                await self.close(code=CLOSE_SESSION_ENDED)
                return

    async def disconnect(self, code: int) -> None:
        for task in (self._ticker, self._watcher):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.channel_layer.group_discard(live.GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The browser only listens; anything it sends is ignored.
        return None

    async def send_json(self, content: Any, close: bool = False) -> None:
        self._last_sent = time.monotonic()
        await super().send_json(content, close)

    async def claim_changed(self, event: dict[str, Any]) -> None:
        await self.send_json(live.claim_event(event["id"], event["status"]))

    async def tick(self) -> None:
        """Work done on every tick: history relay (in-memory layer), keepalive."""
        if self._relays_history() and float(settings.CONSOLE_POLL_SECONDS) > 0:
            rows = await database_sync_to_async(_events_after)(self._seen)
            for event_id, record_id, status in rows:
                self._seen = event_id
                await self.send_json(live.claim_event(record_id, status))
        if time.monotonic() - self._last_sent >= KEEPALIVE_SECONDS:
            await self.send_json(live.keepalive_event())

    async def _tick_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A failed check (database restarting) is retried next tick; the
                # browser's periodic refresh covers the gap.
                log.warning("console websocket tick failed: %s", exc)
