"""System checks for key custody: relay mode needs an operator account to send from.

The check reads the database only when Django passes `databases` (`manage.py check
--database default`, `migrate`), as Django asks of checks that touch a database, and
stays silent when the operator table does not exist yet (before `migrate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

W001 = "assets.W001"
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
