"""Admin for claim records, with their history inline.

Everything is read-only by hand: a claim moves only through the services, which the
actions call (retry publication, CSV export). Each action asks for confirmation,
reports its result, and is written to the admin log and (through the services) to
the claim's history with the staff user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from assets.models import Asset
from claims.models import ClaimEvent, ClaimRecord, ClaimStatus
from console import services as console_services
from console.admin.site import (
    ConsoleAdminMixin,
    ReadOnlyAdmin,
    age,
    badge,
    detail_action,
    exact_time,
    searched_address,
    searched_tx_hash,
    short_did,
    wei_in_chain_unit,
)
from console.display import LIST_ERROR_CHARS, short_text
from console.lifecycle import (
    ExpiresWithinFilter,
    LifecycleAdminMixin,
    LifecycleEndedFilter,
)

if TYPE_CHECKING:
    _ClaimAdmin = admin.ModelAdmin[ClaimRecord]
    _EventInline = admin.TabularInline[ClaimEvent, ClaimRecord]
else:
    from unfold.admin import ModelAdmin as _ClaimAdmin
    from unfold.admin import TabularInline as _EventInline


class ClaimEventInline(ReadOnlyAdmin, _EventInline):
    model = ClaimEvent
    extra = 0
    can_delete = False
    fields = ("when", "kind", "from_status", "to_status", "who", "message")
    readonly_fields = fields
    ordering = ("id",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ClaimEvent]:
        return super().get_queryset(request).select_related("user")

    @admin.display(description="at")
    def when(self, obj: ClaimEvent) -> str:
        # To the second: a claim's events often happen within one minute.
        return exact_time(obj.at)

    @admin.display(description="by")
    def who(self, obj: ClaimEvent) -> str:
        if obj.user is not None:
            return obj.user.get_username()
        return obj.actor_label or obj.actor


class AssetKindFilter(admin.SimpleListFilter):
    title = "asset kind"
    parameter_name = "asset_kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        from assets.models import AssetKind

        return list(AssetKind.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(asset__kind=value) if value else queryset


class FailedSinceFilter(admin.SimpleListFilter):
    """Claims with a failure event since a time: what the dashboard counts.

    `?failed_since=<ISO time>` lists every claim that failed at or after it, whatever
    its status now (a claim retried and published since still counts), so the
    dashboard's "failures in the last 24 h" links to exactly what it counts.
    """

    title = "failed since"
    parameter_name = "failed_since"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("24h", "in the last 24 h")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        from datetime import timedelta

        from django.utils import timezone
        from django.utils.dateparse import parse_datetime

        value = self.value()
        if not value:
            return queryset
        since = (
            timezone.now() - timedelta(hours=24)
            if value == "24h"
            else parse_datetime(value)
        )
        if since is None:
            return queryset.none()
        failed = ClaimEvent.objects.filter(
            to_status=ClaimStatus.FAILED, at__gte=since
        ).values("record_id")
        return queryset.filter(pk__in=failed)


OPEN_REASONS: dict[str, str] = {
    ClaimStatus.REQUESTED: "waiting for the TSO to issue or reject",
    ClaimStatus.ISSUED: "issued; the credential is being stored",
    ClaimStatus.STORED: "stored; waiting to be written on chain",
    ClaimStatus.PUBLISHING: "being written to the DID document on chain",
    ClaimStatus.PUBLISHED: "on chain",
}


def claim_reason(
    status: str, last_error: str, rejection_reason: str, chars: int = 0
) -> str:
    """Why a claim is where it is, in words (amounts in the chain's unit)."""
    if status == ClaimStatus.REJECTED:
        text = (
            f"rejected by the TSO: {rejection_reason}"
            if rejection_reason
            else ("rejected by the TSO")
        )
    elif status == ClaimStatus.FAILED:
        text = wei_in_chain_unit(last_error) if last_error else "failed"
    elif last_error:
        text = f"{OPEN_REASONS.get(status, status)}; retrying after: " + (
            wei_in_chain_unit(last_error)
        )
    else:
        text = OPEN_REASONS.get(status, status)
    return short_text(text, chars) if chars else text


@admin.register(ClaimRecord)
class ClaimRecordAdmin(
    LifecycleAdminMixin, ConsoleAdminMixin, ReadOnlyAdmin, _ClaimAdmin
):
    list_display = (
        "asset_name",
        "asset_did",
        "status_badge",
        "reason",
        "updated",
    )
    list_display_links = ("status_badge",)
    list_select_related = ("asset",)
    list_filter = (
        "status",
        FailedSinceFilter,
        AssetKindFilter,
        "role",
        ExpiresWithinFilter,
        LifecycleEndedFilter,
    )
    # The search box: see get_search_results (exact, indexed lookups only).
    search_fields = ("=claim_id",)
    search_help_text = (
        "Asset label or external id, DID or address (any form), claim id, "
        "tx hash or CID: exact match."
    )
    ordering = ("-id",)
    show_full_result_count = False
    # A laptop screen shows about 12 rows; 50 keeps the page fast at any size.
    list_per_page = 50
    list_fullwidth = True
    actions = ("retry_publication", "export_csv", "renew_now")
    actions_detail = ("retry_detail",)

    def get_urls(self) -> list[Any]:
        # The expiry calendar (console.lifecycle) before the model's own URLs.
        return [*self.lifecycle_urls(), *super().get_urls()]

    inlines = (ClaimEventInline,)
    fieldsets = (
        (None, {"fields": ("asset_link", "claim_id", "role", "role_version")}),
        ("State", {"fields": ("status_badge", "reason_full", "attempts")}),
        (
            "Publication",
            {
                "fields": (
                    "issuer_did",
                    "cid",
                    "service_id",
                    "tx_hash",
                    "block_number",
                    "rejection_reason",
                    "token_preview",
                )
            },
        ),
        (
            "Times",
            {
                "fields": (
                    "created",
                    "issued",
                    "published",
                    "next_retry",
                    "updated",
                )
            },
        ),
    )
    readonly_fields = (
        "asset_link",
        "claim_id",
        "role",
        "role_version",
        "status_badge",
        "reason_full",
        "attempts",
        "issuer_did",
        "cid",
        "service_id",
        "tx_hash",
        "block_number",
        "rejection_reason",
        "token_preview",
        "created",
        "issued",
        "published",
        "next_retry",
        "updated",
    )
    csv_columns = (
        ("id", lambda c: c.pk),
        ("claim_id", lambda c: c.claim_id),
        ("asset_did", lambda c: c.asset.did),
        ("role", lambda c: c.role),
        ("status", lambda c: c.status),
        ("attempts", lambda c: c.attempts),
        ("cid", lambda c: c.cid),
        ("tx_hash", lambda c: c.tx_hash),
        ("last_error", lambda c: c.last_error),
        ("created_at", lambda c: c.created_at.isoformat()),
        ("updated_at", lambda c: c.updated_at.isoformat()),
        ("asset_label", lambda c: c.asset.label),
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ClaimRecord], search_term: str
    ) -> tuple[QuerySet[ClaimRecord], bool]:
        """Exact lookups on indexed columns only: fast with 100,000 claims.

        A DID in any form (legacy, chain id, lowercase) or a bare address finds the
        asset's claims; a tx hash matches whatever its case; anything else is a
        claim id, a CID, or an asset's label / external id.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        address = searched_address(term)
        if address is not None:
            return queryset.filter(asset__address=address), False
        tx_hash = searched_tx_hash(term)
        if tx_hash is not None:
            return queryset.filter(tx_hash__in={tx_hash, tx_hash.lower()}), False
        asset_ids = list(
            Asset.objects.filter(Q(label=term) | Q(external_id=term)).values_list(
                "pk", flat=True
            )[:1000]
        )
        return (
            queryset.filter(Q(claim_id=term) | Q(cid=term) | Q(asset_id__in=asset_ids)),
            False,
        )

    @admin.display(description="asset", ordering="asset__label")
    def asset_name(self, obj: ClaimRecord) -> SafeString:
        url = reverse("admin:assets_asset_change", args=[obj.asset_id])
        return format_html(
            '<a href="{}" class="evops-asset">{}</a>',
            url,
            obj.asset.label or obj.asset.external_id or "(no label)",
        )

    @admin.display(description="DID", ordering="asset__did")
    def asset_did(self, obj: ClaimRecord) -> SafeString | str:
        return short_did(obj.asset.did)

    @admin.display(description="asset")
    def asset_link(self, obj: ClaimRecord) -> SafeString:
        url = reverse("admin:assets_asset_change", args=[obj.asset_id])
        return format_html(
            '<a href="{}">{}</a> {}',
            url,
            obj.asset.label or obj.asset.external_id or "(no label)",
            short_did(obj.asset.did),
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: ClaimRecord) -> SafeString:
        return badge(obj.status, obj.get_status_display())

    @admin.display(description="reason")
    def reason(self, obj: ClaimRecord) -> SafeString:
        text = claim_reason(obj.status, obj.last_error, obj.rejection_reason)
        return format_html(
            '<span class="evops-reason" title="{}">{}</span>',
            text,
            short_text(text, LIST_ERROR_CHARS),
        )

    @admin.display(description="why")
    def reason_full(self, obj: ClaimRecord) -> SafeString:
        return format_html(
            '<pre class="evops-pre">{}</pre>',
            claim_reason(obj.status, obj.last_error, obj.rejection_reason),
        )

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: ClaimRecord) -> SafeString | str:
        return age(obj.updated_at)

    @admin.display(description="created")
    def created(self, obj: ClaimRecord) -> SafeString | str:
        return age(obj.created_at)

    @admin.display(description="issued")
    def issued(self, obj: ClaimRecord) -> SafeString | str:
        return age(obj.issued_at) or "not yet"

    @admin.display(description="published")
    def published(self, obj: ClaimRecord) -> SafeString | str:
        return age(obj.published_at) or "not yet"

    @admin.display(description="next retry")
    def next_retry(self, obj: ClaimRecord) -> str:
        return exact_time(obj.next_retry_at) or "none scheduled"

    @admin.display(description="issued credential")
    def token_preview(self, obj: ClaimRecord) -> str:
        # Public (it ends up in the DID document); shortened for the page.
        return short_text(obj.token, 60) if obj.token else ""

    def _retry(
        self, request: HttpRequest, failed: list[ClaimRecord], selected: int
    ) -> None:
        """Run the retry service; the result line says what happened to each."""
        result = console_services.claims_retry_publication(
            claims=failed, actor_user=request.user
        )
        by_pk = {claim.pk: claim for claim in failed}
        self.log_staff_action(
            request,
            [by_pk[pk] for pk in result.scheduled],
            "Retry publication scheduled.",
        )
        skipped = selected - len(result.scheduled)
        level = messages.SUCCESS if result.scheduled else messages.WARNING
        self.message_user(
            request,
            retry_result_text(len(result.scheduled), skipped),
            level,
        )

    @admin.action(
        description="Retry publication of selected failed claims",
        permissions=["retry_publication"],
    )
    def retry_publication(
        self, request: HttpRequest, queryset: QuerySet[ClaimRecord]
    ) -> HttpResponse | None:
        failed = queryset.filter(status=ClaimStatus.FAILED)
        failed_count = failed.count()
        confirm = self.confirm_or_none(
            request,
            queryset,
            action="retry_publication",
            title="Retry publication?",
            headline=retry_headline(failed_count),
            summary=RETRY_SUMMARY,
            nothing=NOTHING_TO_RETRY if failed_count == 0 else "",
        )
        if confirm is not None:
            return confirm
        # Only the failed rows are loaded: "select all" on a big list may name
        # 100,000 claims of which a few are failed.
        selected = queryset.count()
        self._retry(request, list(failed.select_related("asset")), selected)
        return None

    @detail_action(
        description="Retry",
        permissions=["retry_publication"],
        url_path="retry",
        icon="replay",
    )
    def retry_detail(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The claim page's Retry: confirm (GET), then retry (POST)."""
        claim = get_object_or_404(
            ClaimRecord.objects.select_related("asset"), pk=object_id
        )
        back = reverse("admin:claims_claimrecord_change", args=[claim.pk])
        failed = claim.status == ClaimStatus.FAILED
        if request.method != "POST" or request.POST.get("confirm") != "yes":
            return self.confirm_page(
                request,
                title="Retry publication?",
                headline=retry_headline(1 if failed else 0),
                summary=RETRY_SUMMARY,
                preview=[f"{claim.claim_id} of {claim.asset} ({claim.status})"],
                nothing=(
                    ""
                    if failed
                    else f"Nothing to retry: this claim is "
                    f"{claim.get_status_display().lower()}, not failed."
                ),
                back=back,
            )
        self._retry(request, [claim] if failed else [], 1)
        return redirect(back)

    @admin.action(
        description="Export selected claims as CSV", permissions=["export_csv"]
    )
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[ClaimRecord]
    ) -> HttpResponseBase:
        queryset = queryset.order_by("id")
        user = request.user

        def note(claims: list[ClaimRecord]) -> None:
            # Each chunk's "exported" events in one INSERT, as it is streamed: the
            # history stays complete without delaying the download's first byte.
            console_services.claims_note_export(
                claim_ids=[claim.pk for claim in claims], actor_user=user
            )

        return self.export_csv_response(
            request,
            queryset.select_related("asset"),
            "claims.csv",
            before_chunk=note,
        )


RETRY_SUMMARY = (
    "Each failed claim goes back to the step it failed at; the listener then "
    "publishes it (never twice). Claims that are not failed are left alone."
)
NOTHING_TO_RETRY = "None of the selected claims is failed: there is nothing to retry."


def _claims(count: int) -> str:
    return f"{count} failed claim" + ("" if count == 1 else "s")


def retry_headline(failed: int) -> str:
    """`Retry 1 failed claim.`"""
    return f"Retry {_claims(failed)}." if failed else "Nothing to retry."


def retry_result_text(scheduled: int, skipped: int) -> str:
    """`Retry publication: 1 scheduled; 0 skipped: not failed.`"""
    return f"Retry publication: {scheduled} scheduled; {skipped} skipped: not failed."
