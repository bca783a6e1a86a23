from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from console.dashboard import dashboard_view
from evops.security import ConsoleAdminSite

# The default site, with the optional TOTP second factor (ADMIN_OTP_REQUIRED).
admin.site.__class__ = ConsoleAdminSite
admin.site.site_header = "evops console"
admin.site.site_title = "evops console"
admin.site.index_title = "Operator console"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # Before admin.site.urls: the admin's catch-all would answer this path first.
    path(
        "admin/dashboard/",
        admin.site.admin_view(dashboard_view),
        name="console-dashboard",
    ),
    path("admin/", admin.site.urls),
]
