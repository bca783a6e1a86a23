"""Settings for the test suite: the real settings module with test defaults.

Tests run against PostgreSQL (`DATABASE_URL` may point elsewhere). The encryption key
here is a fixed test key; never use it for anything else.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Never pick up a developer's .env (the sandbox writes one) in tests.
os.environ["EVOPS_ENV_FILE"] = ""
# One database per checkout (pytest-django prefixes it with test_): two checkouts
# running their suites at once on one machine must not drop each other's database.
_CHECKOUT = hashlib.sha256(str(Path(__file__).resolve().parent.parent).encode())
os.environ.setdefault(
    "DATABASE_URL",
    f"postgres://postgres@127.0.0.1:5432/evops_{_CHECKOUT.hexdigest()[:10]}",
)
os.environ.setdefault(
    "SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789"
)
os.environ.setdefault(
    "EVOPS_KEY_ENCRYPTION_KEYS",
    "test1:dGVzdC1vbmx5LWtleS1lbmNyeXB0aW9uLWtleS0wMDE=",
)
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")

from evops.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Production settings hash static names through a manifest that only collectstatic
# writes; the tests serve static files from the apps (finders) instead.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# WhiteNoise looks files up per request (no STATIC_ROOT to scan at start-up).
WHITENOISE_AUTOREFRESH = True
WHITENOISE_USE_FINDERS = True
