"""The `viewer` and `operator` groups and the permissions each holds.

viewer: sees every console list and page (Django's view permissions), runs nothing.
operator: a viewer who may also run the console actions (the custom permissions of
`console.ConsoleAction`). Neither may add, change or delete rows by hand: claims move
only through services. Created after every migrate and by `manage.py setup_groups`;
both are idempotent and reset the groups' permissions to exactly these.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db.models import Q

VIEWER = "viewer"
OPERATOR = "operator"

RETRY_PUBLICATION = "console.retry_publication"
RECONCILE_ASSETS = "console.reconcile_assets"
REQUEST_PREQUALIFICATION = "console.request_prequalification"
EXPORT_CSV = "console.export_csv"

ACTION_PERMISSIONS = (
    RETRY_PUBLICATION,
    RECONCILE_ASSETS,
    REQUEST_PREQUALIFICATION,
    EXPORT_CSV,
)
VIEW_PERMISSIONS = (
    "assets.view_asset",
    "claims.view_claimrecord",
    "claims.view_claimevent",
    "claims.view_inboundmessage",
    "claims.view_listenerheartbeat",
)


def _permissions(labels: tuple[str, ...]) -> list[Permission]:
    query = Q()
    for label in labels:
        app_label, codename = label.split(".", 1)
        query |= Q(content_type__app_label=app_label, codename=codename)
    found = list(Permission.objects.filter(query))
    if len(found) != len(labels):
        have = {f"{p.content_type.app_label}.{p.codename}" for p in found}
        missing = sorted(set(labels) - have)
        raise LookupError(f"permissions missing (run migrate first): {missing}")
    return found


def ensure_groups() -> dict[str, Group]:
    """Create or reset the two groups; returns them by name."""
    viewer, _ = Group.objects.get_or_create(name=VIEWER)
    operator, _ = Group.objects.get_or_create(name=OPERATOR)
    viewer.permissions.set(_permissions(VIEW_PERMISSIONS))
    operator.permissions.set(_permissions(VIEW_PERMISSIONS + ACTION_PERMISSIONS))
    return {VIEWER: viewer, OPERATOR: operator}


def ensure_groups_after_migrate(using: str = "default", **kwargs: Any) -> None:
    """post_migrate receiver (console's own signal, so all permissions exist)."""
    ensure_groups()
