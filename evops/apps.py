from __future__ import annotations

from django.apps import AppConfig


class EvopsConfig(AppConfig):
    name = "evops"
    verbose_name = "evops"

    def ready(self) -> None:
        from evops import checks  # noqa: F401  (registers the system checks)
