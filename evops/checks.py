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
