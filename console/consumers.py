"""The console's websocket: staff only, relays claim changes to the browser.

With the in-memory channel layer, changes made by another process (the listener)
never reach this one through the layer, so the consumer also checks the claim
history every `CONSOLE_POLL_SECONDS` and relays events it had not seen. With
channels-redis the layer carries them and the check is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from console import live

log = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
CLOSE_SESSION_ENDED = 4401
_POLL_BATCH = 50


def _allowed(user: Any) -> bool:
    return bool(
        user is not None
        and user.is_active
        and user.is_staff
        and user.has_perm("claims.view_claimrecord")
    )


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

    _poller: asyncio.Task[None] | None = None
    _watcher: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not await database_sync_to_async(_allowed)(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.channel_layer.group_add(live.GROUP, self.channel_name)
        await self.accept()
        interval = float(settings.CONSOLE_POLL_SECONDS)
        if interval > 0 and not settings.CHANNEL_LAYER_URL:
            seen = await database_sync_to_async(_last_event_id)()
            self._poller = asyncio.create_task(self._poll(seen, interval))
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
        for task in (self._poller, self._watcher):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.channel_layer.group_discard(live.GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The browser only listens; anything it sends is ignored.
        return None

    async def claim_changed(self, event: dict[str, Any]) -> None:
        await self.send_json(live.claim_event(event["id"], event["status"]))

    async def _poll(self, seen: int, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                rows = await database_sync_to_async(_events_after)(seen)
            except Exception as exc:
                log.warning("console history check failed: %s", exc)
                continue
            for event_id, record_id, status in rows:
                seen = event_id
                await self.send_json(live.claim_event(record_id, status))
