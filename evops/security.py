"""The console's login defences that are not plain settings.

`ConsoleAdminSite` is the admin site's class (`evops.urls` sets it on `admin.site`):
with `ADMIN_OTP_REQUIRED` on it asks for a TOTP code at login and admits only users
verified by a device (django-otp's `OTPAdminSite` behaviour); with it off it is
Django's own admin site. The setting is read at each request, so tests can switch it.

`websocket_access_ok` is what the console's websocket re-checks while it is open:
the session still exists and still names the user, who is still active staff with
the view permission (and OTP-verified when required).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.http import HttpRequest
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite
from unfold.sites import UnfoldAdminSite

CONSOLE_PERMISSION = "claims.view_claimrecord"


class ConsoleAdminSite(UnfoldAdminSite):  # type: ignore[misc]
    """The console's admin site (django-unfold's, with its search and theme), plus a
    TOTP second factor when ADMIN_OTP_REQUIRED."""

    # Properties, read by AdminSite.login at each request, where Django has plain
    # class attributes: the setting may change (tests) without a new site.
    @property
    def login_form(self) -> type[AdminAuthenticationForm]:
        if settings.ADMIN_OTP_REQUIRED:
            form: type[AdminAuthenticationForm] = OTPAdminAuthenticationForm
            return form
        return AdminAuthenticationForm

    @property
    def login_template(self) -> str | None:
        if settings.ADMIN_OTP_REQUIRED:
            return str(OTPAdminSite.login_template)
        return None

    def has_permission(self, request: HttpRequest) -> bool:
        if not super().has_permission(request):
            return False
        if not settings.ADMIN_OTP_REQUIRED:
            return True
        verified = getattr(request.user, "is_verified", None)
        return bool(verified and verified())


def websocket_access_ok(session_key: str | None, user_id: Any) -> bool:
    """Whether an open console websocket may keep receiving (synchronous: DB)."""
    from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django_otp import DEVICE_ID_SESSION_KEY

    if not session_key or user_id is None:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if not store.exists(session_key):
        return False  # logged out, expired, or every session deleted
    data = store.load()
    if str(data.get(SESSION_KEY)) != str(user_id):
        return False
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not (user.is_active and user.is_staff):
        return False
    # A password change ends the other sessions (Django's session hash).
    if data.get(HASH_SESSION_KEY) != user.get_session_auth_hash():
        return False
    if settings.ADMIN_OTP_REQUIRED and not data.get(DEVICE_ID_SESSION_KEY):
        return False
    return bool(user.has_perm(CONSOLE_PERMISSION))
