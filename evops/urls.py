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
admin.site.index_title = "Dashboard"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # The dashboard is the admin's index, so login lands on it. Before
    # admin.site.urls, whose index would answer this path first.
    path("admin/", admin.site.admin_view(dashboard_view), name="console-dashboard"),
    path(
        "admin/dashboard/",
        RedirectView.as_view(pattern_name="console-dashboard", query_string=True),
    ),
    path("admin/", admin.site.urls),
]
