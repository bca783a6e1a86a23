"""`manage.py setup_groups`: (re)create the `viewer` and `operator` groups."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from console.groups import ensure_groups


class Command(BaseCommand):
    help = "Create the viewer and operator groups with exactly their permissions."

    def handle(self, *args: Any, **options: Any) -> None:
        for name, group in ensure_groups().items():
            count = group.permissions.count()
            self.stdout.write(f"group {name}: {count} permissions")
