"""The console's view of the credential lifecycle (claims.lifecycle).

- `ExpiresWithinFilter`: published claims expiring in the next 7 or 30 days, or
  already past their expiry (the sweep has not run yet);
- `LifecycleEndedFilter`: revoked / expired / superseded, and whether the entry is
  still in the document;
- `LifecycleAdminMixin`: the "renew now" action (with the shared confirmation page:
  it files a new prequalification request as the asset, whatever the renewal window
  says; a revoked role is refused) and the expiry calendar page (what expires in the
  next 7 and 30 days, and the fleet's prequalified share).

The admin of claims mixes this in; nothing here writes except through
`claims.lifecycle.renew_now`, which notes the staff user in the claim's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone

from assets.models import Asset
from claims import lifecycle
from claims.integrations import Integrations, integrations_from_settings
from claims.models import ClaimRecord, ClaimStatus, staff_actor
from claims.retry import readable_error
from console import groups

CALENDAR_DAYS = (7, 30)
CALENDAR_ROWS = 500


class ExpiresWithinFilter(admin.SimpleListFilter):
    title = "expires"
    parameter_name = "expires"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("7", "within 7 days"),
            ("30", "within 30 days"),
            ("past", "past expiry (not swept yet)"),
            ("never", "never"),
        ]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[ClaimRecord]
    ) -> QuerySet[ClaimRecord]:
        value = self.value()
        now = timezone.now()
        published = queryset.filter(status=ClaimStatus.PUBLISHED)
        if value in ("7", "30"):
            return published.filter(
                expires_at__gt=now, expires_at__lte=now + timedelta(days=int(value))
            )
        if value == "past":
            return published.filter(expires_at__lte=now)
        if value == "never":
            return published.filter(expires_at__isnull=True)
        return queryset


class LifecycleEndedFilter(admin.SimpleListFilter):
    title = "ended"
    parameter_name = "ended"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("revoked", "revoked"),
            ("expired", "expired"),
            ("superseded", "superseded"),
            ("entry_left", "ended, entry still on chain"),
        ]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[ClaimRecord]
    ) -> QuerySet[ClaimRecord]:
        value = self.value()
        if value in ("revoked", "expired", "superseded"):
            return queryset.filter(status=value)
        if value == "entry_left":
            return queryset.filter(
                status__in=[
                    ClaimStatus.REVOKED,
                    ClaimStatus.EXPIRED,
                    ClaimStatus.SUPERSEDED,
                ],
                entry_removed_at__isnull=True,
            )
        return queryset


@dataclass(frozen=True)
class Calendar:
    assets: int
    prequalified: int
    windows: list[tuple[int, list[ClaimRecord]]]

    @property
    def share(self) -> float:
        return 100.0 * self.prequalified / self.assets if self.assets else 0.0


def expiry_calendar(now: Any = None) -> Calendar:
    """What expires in the next 7 and 30 days, and the prequalified share.

    An asset counts as prequalified when it has a published credential that has
    not expired (a published record past its expiry waits for the sweep).
    """
    now = now or timezone.now()
    active = Asset.objects.filter(active=True)
    valid = ClaimRecord.objects.filter(status=ClaimStatus.PUBLISHED).exclude(
        expires_at__lte=now
    )
    prequalified = active.filter(claims__in=valid).distinct().count()
    windows = []
    for days in CALENDAR_DAYS:
        rows = list(
            ClaimRecord.objects.select_related("asset")
            .filter(
                status=ClaimStatus.PUBLISHED,
                expires_at__gt=now,
                expires_at__lte=now + timedelta(days=days),
            )
            .order_by("expires_at")[:CALENDAR_ROWS]
        )
        windows.append((days, rows))
    return Calendar(assets=active.count(), prequalified=prequalified, windows=windows)


def renew_now(
    *, claims: list[ClaimRecord], actor_user: Any, integrations: Any = None
) -> tuple[int, list[str]]:
    """File a renewal for each published claim, as the staff user."""
    actor = staff_actor(actor_user)
    errors: list[str] = []
    filed = 0

    async def work() -> None:
        nonlocal filed
        bundle: Integrations = (integrations or integrations_from_settings)()
        try:
            for claim in claims:
                try:
                    if await lifecycle.renew_now(
                        claim, integrations=bundle, actor=actor
                    ):
                        filed += 1
                    else:
                        errors.append(f"{claim.claim_id}: not renewed (role revoked)")
                except Exception as exc:
                    errors.append(f"{claim.claim_id}: {readable_error(exc)}")
        finally:
            await bundle.aclose()

    async_to_sync(work)()
    return filed, errors


class LifecycleAdminMixin:
    """Mixed into the claims admin: the "renew now" action and the calendar page."""

    lifecycle_integrations: Any = None  # tests pass their own factory

    def has_renew_now_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(groups.REQUEST_PREQUALIFICATION)

    @admin.action(
        description="Renew now (file a new prequalification request)",
        permissions=["renew_now"],
    )
    def renew_now(
        self, request: HttpRequest, queryset: QuerySet[ClaimRecord]
    ) -> HttpResponse | None:
        published = queryset.filter(status=ClaimStatus.PUBLISHED)
        confirm = self.confirm_or_none(  # type: ignore[attr-defined]
            request,
            queryset,
            action="renew_now",
            title="Renew now?",
            summary=(
                f"{published.count()} of the selected claims are published; for "
                "each, a new prequalification request is filed as its asset now. "
                "The current credential stays in the DID document until the "
                "renewal is published. Other claims are left alone."
            ),
        )
        if confirm is not None:
            response: HttpResponse = confirm
            return response
        claims = list(published.select_related("asset")[:100])
        filed, errors = renew_now(
            claims=claims,
            actor_user=request.user,
            integrations=self.lifecycle_integrations,
        )
        level = messages.SUCCESS if filed and not errors else messages.WARNING
        text = f"Renew now: {filed} filed"
        if errors:
            text += f", {len(errors)} not: " + "; ".join(errors[:5])
        self.message_user(request, text, level)  # type: ignore[attr-defined]
        return None

    def lifecycle_urls(self) -> list[URLPattern]:
        site: Any = self.admin_site  # type: ignore[attr-defined]
        return [
            path(
                "expiry-calendar/",
                site.admin_view(self.calendar_view),
                name="claims_claimrecord_expiry_calendar",
            )
        ]

    def calendar_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_view_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        site: Any = self.admin_site  # type: ignore[attr-defined]
        context = {
            **site.each_context(request),
            "title": "Expiry calendar",
            "opts": ClaimRecord._meta,
            "calendar": expiry_calendar(),
        }
        return TemplateResponse(request, "admin/evops/expiry_calendar.html", context)
