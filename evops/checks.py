"""System checks for rules that span several settings.

Single settings are validated where they are read (`evops/settings.py`); what depends on
a combination of them is checked here, so `manage.py check` reports them all at once.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register


@register(Tags.security, deploy=True)
def check_key_encryption(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    keys = settings.EVOPS_KEY_ENCRYPTION_KEYS
    if len({material for _, material in keys}) != len(keys):
        errors.append(
            Error(
                "EVOPS_KEY_ENCRYPTION_KEYS lists the same key material under two ids.",
                id="evops.E001",
            )
        )
    return errors


@register()
def check_leases(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Leases must outlast a few missed heartbeats, or live work is taken over."""
    errors: list[CheckMessage] = []
    beat = float(settings.HEARTBEAT_INTERVAL)
    for name in ("PUBLISH_LEASE_SECONDS", "INBOX_LEASE_SECONDS"):
        lease = float(getattr(settings, name))
        if lease < 3 * beat:
            errors.append(
                Error(
                    f"{name} ({lease:g}s) must be at least three heartbeats "
                    f"(3 x HEARTBEAT_INTERVAL = {3 * beat:g}s): a live listener's "
                    "work would be taken over by another.",
                    id="evops.E010",
                )
            )
    return errors
