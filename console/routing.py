"""Websocket routes of the console (mounted by `evops.asgi`)."""

from __future__ import annotations

from typing import Any

from django.urls import path

from console.consumers import ConsoleConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/console/", ConsoleConsumer.as_asgi()),  # type: ignore[arg-type]
]
