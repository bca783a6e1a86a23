"""The console's sidebar (django-unfold `SIDEBAR.navigation`): dashboard first.

Each entry shows only to a user who may view what it links to; the lists are the
admin's, so the permissions are Django's view permissions (see `console.groups`).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import reverse


def _can(perm: str) -> Any:
    def check(request: HttpRequest) -> bool:
        return bool(request.user.has_perm(perm))

    return check


def sidebar(request: HttpRequest) -> list[dict[str, Any]]:
    """Sidebar groups; called per request by unfold."""
    return [
        {
            "title": "Console",
            "separator": False,
            "items": [
                {
                    "title": "Dashboard",
                    "icon": "dashboard",
                    "link": reverse("admin:index"),
                    "permission": _can("claims.view_claimrecord"),
                },
                {
                    "title": "Assets",
                    "icon": "ev_station",
                    "link": reverse("admin:assets_asset_changelist"),
                    "permission": _can("assets.view_asset"),
                },
                {
                    "title": "Claims",
                    "icon": "verified",
                    "link": reverse("admin:claims_claimrecord_changelist"),
                    "permission": _can("claims.view_claimrecord"),
                },
                {
                    "title": "Inbox",
                    "icon": "inbox",
                    "link": reverse("admin:claims_inboundmessage_changelist"),
                    "permission": _can("claims.view_inboundmessage"),
                },
                {
                    "title": "Listeners",
                    "icon": "sensors",
                    "link": reverse("admin:claims_listenerheartbeat_changelist"),
                    "permission": _can("claims.view_listenerheartbeat"),
                },
            ],
        },
        {
            "title": "Administration",
            "separator": True,
            "items": [
                {
                    "title": "Operator accounts",
                    "icon": "account_balance_wallet",
                    "link": reverse("admin:assets_operatoraccount_changelist"),
                    "permission": _can("assets.view_operatoraccount"),
                },
                {
                    "title": "Users",
                    "icon": "person",
                    "link": reverse("admin:auth_user_changelist"),
                    "permission": _can("auth.view_user"),
                },
                {
                    "title": "Groups",
                    "icon": "group",
                    "link": reverse("admin:auth_group_changelist"),
                    "permission": _can("auth.view_group"),
                },
            ],
        },
    ]
