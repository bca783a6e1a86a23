"""What a long-running process checks before it starts serving.

Settings are read lazily so that commands which need nothing run on a fresh checkout;
the processes that do need them refuse to start here instead, naming the variable:

- the console (`evops.asgi`) calls `require_settings()`: the ASGI server runs no
  system checks, so without this a console with no master key would start and fail
  on the first action that signs;
- the listener (`run_nats_listener`) also runs the database-reading system checks
  and refuses to start on any in `LISTENER_FATAL` (no usable relay operator, stored
  keys sealed with a master key that is not configured, active assets on another
  chain). For `check` and `migrate` those are warnings: `migrate` must run while the
  operator fixes them.
"""

from __future__ import annotations

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS

REQUIRED = ("SECRET_KEY", "EVOPS_KEY_ENCRYPTION_KEYS")
NOT_SET = "Set the {name} environment variable."
# Checks the listener treats as errors: each stops it from doing its work correctly.
LISTENER_FATAL = frozenset({"assets.W001", "assets.W002", "assets.W003"})
LISTENER_REFUSED = "The listener cannot start: {problems}"


def missing_settings() -> list[str]:
    """The mandatory settings that are empty, in the order of `REQUIRED`."""
    missing: list[str] = []
    for name in REQUIRED:
        try:
            value = getattr(settings, name, None)
        except ImproperlyConfigured:  # Django's own refusal of an empty SECRET_KEY
            value = None
        if not value:
            missing.append(name)
    return missing


def require_settings() -> None:
    """Raise `ImproperlyConfigured` naming the first mandatory setting not set."""
    for name in missing_settings():
        raise ImproperlyConfigured(NOT_SET.format(name=name))


def listener_problems() -> list[str]:
    """System-check findings that must stop the listener, as readable lines."""
    found = checks.run_checks(databases=[DEFAULT_DB_ALIAS])
    problems: list[str] = []
    for message in found:
        if message.is_serious() or message.id in LISTENER_FATAL:
            line = f"{message.id}: {message.msg}"
            if message.hint:
                line += f" HINT: {message.hint}"
            problems.append(line)
    return problems
