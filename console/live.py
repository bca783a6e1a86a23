"""Live updates for the console: claim changes pushed to the channel layer.

The pipeline's services send `claims.signals.claim_changed` after each commit; the
console app connects `on_claim_changed` to it, which pushes one small event to the
`GROUP` group that every console websocket joins. A failure to push is logged and
swallowed: a live update is a nicety and must never break a claim write.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

GROUP = "console.claims"
EVENT_TYPE = "claim.changed"
KEEPALIVE_TYPE = "keepalive"


def claim_event(record_id: int, status: str) -> dict[str, Any]:
    """The message a console websocket receives (also the channel-layer event)."""
    return {"type": EVENT_TYPE, "id": int(record_id), "status": str(status)}


def keepalive_event() -> dict[str, Any]:
    """Sent on a quiet socket now and then so that proxies keep it open."""
    return {"type": KEEPALIVE_TYPE}


def send_claim_changed(record_id: int, status: str) -> bool:
    """Push one event now; True when the layer took it."""
    layer = get_channel_layer()
    if layer is None:
        return False
    if isinstance(layer, InMemoryChannelLayer) and not layer.groups.get(GROUP):
        # No console socket in this process (the listener's: consoles elsewhere
        # poll the history): nothing to push, so no hop into the event loop, which
        # cost the listener's database threads a round trip per claim.
        return False
    try:
        async_to_sync(layer.group_send)(GROUP, claim_event(record_id, status))
    except Exception as exc:
        # A live update is never worth failing the write that caused it.
        log.warning("live update for claim %s not sent: %s", record_id, exc)
        return False
    return True


def publish_claim_changed(claim: Any) -> None:
    """Push a claim's change once the current transaction commits (or now)."""
    record_id, status = claim.pk, claim.status
    transaction.on_commit(lambda: send_claim_changed(record_id, status))


def on_claim_changed(
    sender: Any, *, record_id: int, status: str, **kwargs: Any
) -> None:
    """Receiver of `claims.signals.claim_changed` (already sent after commit)."""
    send_claim_changed(record_id, status)
