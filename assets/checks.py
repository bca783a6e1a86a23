"""System checks for key custody.

Relay mode needs an operator account to send from, every stored key must be
sealed with a master key that is still configured (a key dropped from
EVOPS_KEY_ENCRYPTION_KEYS too early makes those assets unusable), and active assets
must be on CHAIN_ID's chain. These are warnings for `check` and `migrate` (which must
not be blocked while the operator fixes them); the listener runs them at start and
refuses to start on any of them (`evops.startup.LISTENER_FATAL`).

The check reads the database only when Django passes `databases` (`manage.py check
--database default`, `migrate`), as Django asks of checks that touch a database, and
stays silent when the operator table does not exist yet (before `migrate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.models import Count

E001 = "assets.E001"
W001 = "assets.W001"
W002 = "assets.W002"
UNKNOWN_MASTER_KEY = (
    "{count} stored key(s) are sealed with master key(s) {ids} that "
    "EVOPS_KEY_ENCRYPTION_KEYS does not list; they cannot be used."
)
UNKNOWN_MASTER_KEY_HINT = (
    "Add the old key back to EVOPS_KEY_ENCRYPTION_KEYS (after the first one), run "
    "`manage.py rotate_encryption_key`, and only then drop it."
)
NO_OPERATOR_HINT = (
    "Run `manage.py generate_operator_key` (and fund the address it prints) or "
    "`manage.py import_operator_key PATH`; with several operators set "
    "CHAIN_OPERATOR_ADDRESS."
)


def check_relay_operator(
    app_configs: Sequence[Any] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """Warn when CHAIN_WRITE_MODE=relay and no usable operator account is stored."""
    if settings.CHAIN_WRITE_MODE != "relay" or DEFAULT_DB_ALIAS not in (
        databases or ()
    ):
        return []
    from assets.models import OperatorAccount
    from assets.selectors import OperatorNotConfigured, operator_account_for

    try:
        # Look before querying: a failed query would poison an open transaction.
        tables = connections[DEFAULT_DB_ALIAS].introspection.table_names()
        if OperatorAccount._meta.db_table not in tables:
            return []  # migrate has not created it yet
        operator_account_for()
    except OperatorNotConfigured as exc:
        return [Warning(str(exc), hint=NO_OPERATOR_HINT, id=W001)]
    except DatabaseError:
        return []  # no database to ask: other checks and commands will say so
    return []


def check_master_keys_configured(
    app_configs: Sequence[Any] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """Warn when stored keys were sealed with a master key no longer configured.

    A warning, not an error: `migrate` runs database checks, and must not be blocked
    while the operator restores the missing key.
    """
    if DEFAULT_DB_ALIAS not in (databases or ()):
        return []
    from assets.models import AssetKey, OperatorAccount

    configured = [key_id for key_id, _ in settings.EVOPS_KEY_ENCRYPTION_KEYS]
    try:
        tables = connections[DEFAULT_DB_ALIAS].introspection.table_names()
        unknown: dict[str, int] = {}
        for model in (AssetKey, OperatorAccount):
            if model._meta.db_table not in tables:
                continue
            rows = (
                model.objects.exclude(key_id__in=configured)
                .values_list("key_id", flat=True)
                .distinct()
            )
            for key_id in rows:
                count = model.objects.filter(key_id=key_id).count()
                unknown[key_id] = unknown.get(key_id, 0) + count
    except DatabaseError:
        return []
    if not unknown:
        return []
    message = UNKNOWN_MASTER_KEY.format(
        count=sum(unknown.values()), ids=", ".join(sorted(unknown))
    )
    return [Warning(message, hint=UNKNOWN_MASTER_KEY_HINT, id=W002)]


W003 = "assets.W003"
ASSETS_ON_OTHER_CHAIN = (
    "{count} active asset(s) are on chain(s) {chains}, not on {expected} (CHAIN_ID "
    "{chain_id}); the listener cannot serve them."
)
ASSETS_ON_OTHER_CHAIN_HINT = (
    "Set CHAIN_ID (and CHAIN_RPC_URL) to the assets' chain, or deactivate the assets "
    "that belong to another deployment."
)


def check_assets_chain(
    app_configs: Sequence[Any] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """Warn when active assets are on another chain than CHAIN_ID's.

    Their DIDs name that other chain, so every login and every DID-document write
    for them would go to the wrong network; the listener refuses to start on it.
    """
    if DEFAULT_DB_ALIAS not in (databases or ()):
        return []
    from assets.models import Asset
    from assets.selectors import operator_chain_default

    expected = operator_chain_default()
    try:
        tables = connections[DEFAULT_DB_ALIAS].introspection.table_names()
        if Asset._meta.db_table not in tables:
            return []
        rows = (
            Asset.objects.filter(active=True)
            .exclude(chain=expected)
            .order_by()
            .values("chain")
            .annotate(n=Count("id"))
        )
        others = {str(row["chain"]): int(row["n"]) for row in rows}
    except DatabaseError:
        return []
    if not others:
        return []
    message = ASSETS_ON_OTHER_CHAIN.format(
        count=sum(others.values()),
        chains=", ".join(sorted(others)),
        expected=expected,
        chain_id=settings.CHAIN_ID,
    )
    return [Warning(message, hint=ASSETS_ON_OTHER_CHAIN_HINT, id=W003)]


PKCS11_MISSING = "SIGNER_BACKEND=pkcs11 needs {names}."
PKCS11_MISSING_HINT = (
    "Set PKCS11_MODULE (the module's .so, e.g. /usr/lib/softhsm/libsofthsm2.so), "
    "PKCS11_TOKEN_LABEL and PKCS11_PIN_FILE or the PKCS11_PIN environment variable."
)
PKCS11_NO_MODULE = "PKCS11_MODULE {path} is not a file."


def check_pkcs11_configured(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """SIGNER_BACKEND=pkcs11 needs a module, a token label and a PIN source."""
    import os

    module = settings.PKCS11_MODULE
    if settings.SIGNER_BACKEND != "pkcs11" and not module:
        return []
    missing = [
        name
        for name, value in (
            ("PKCS11_MODULE", module),
            ("PKCS11_TOKEN_LABEL", settings.PKCS11_TOKEN_LABEL),
            (
                "PKCS11_PIN_FILE or PKCS11_PIN",
                settings.PKCS11_PIN_FILE or os.environ.get("PKCS11_PIN", ""),
            ),
        )
        if not value
    ]
    errors: list[CheckMessage] = []
    if missing:
        errors.append(
            Error(
                PKCS11_MISSING.format(names=", ".join(missing)),
                hint=PKCS11_MISSING_HINT,
                id=E001,
            )
        )
    if module and not os.path.isfile(module):
        errors.append(Error(PKCS11_NO_MODULE.format(path=module), id=E001))
    return errors
