"""Admin for the listeners' heartbeats: each `run_nats_listener` process, read-only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.utils.safestring import SafeString

from claims.models import ListenerHeartbeat
from console.admin.site import ReadOnlyAdmin, age, badge

if TYPE_CHECKING:
    _HeartbeatAdmin = admin.ModelAdmin[ListenerHeartbeat]
else:
    from unfold.admin import ModelAdmin as _HeartbeatAdmin


@admin.register(ListenerHeartbeat)
class ListenerHeartbeatAdmin(ReadOnlyAdmin, _HeartbeatAdmin):
    list_display = ("name", "state_badge", "heartbeat", "mode", "host", "pid")
    readonly_fields = (
        "name",
        "state",
        "heartbeat",
        "started",
        "pid",
        "host",
        "mode",
        "details",
    )
    exclude = ("last_heartbeat", "started_at")

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: ListenerHeartbeat) -> SafeString:
        return badge(obj.state, obj.get_state_display())

    @admin.display(description="last heartbeat", ordering="last_heartbeat")
    def heartbeat(self, obj: ListenerHeartbeat) -> SafeString | str:
        return age(obj.last_heartbeat)

    @admin.display(description="started")
    def started(self, obj: ListenerHeartbeat) -> SafeString | str:
        return age(obj.started_at)
