"""Admin for the pipeline's records: claims with their history, the inbox, listeners.

Everything is read-only by hand: a claim moves only through the services, which the
actions call (retry publication, CSV export). Each action asks for confirmation,
reports its result, and is written to the admin log and (through the services) to
the claim's history with the staff user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from claims.models import (
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    ListenerHeartbeat,
)
from console import services as console_services
from console.admin.site import (
    ConsoleAdminMixin,
    badge,
    message_for,
    searched_address,
    searched_tx_hash,
)
from console.lifecycle import (
    ExpiresWithinFilter,
    LifecycleAdminMixin,
    LifecycleEndedFilter,
)

if TYPE_CHECKING:
    _ClaimAdmin = admin.ModelAdmin[ClaimRecord]
    _InboundAdmin = admin.ModelAdmin[InboundMessage]
    _HeartbeatAdmin = admin.ModelAdmin[ListenerHeartbeat]
    _EventInline = admin.TabularInline[ClaimEvent, ClaimRecord]
else:
    _ClaimAdmin = _InboundAdmin = _HeartbeatAdmin = admin.ModelAdmin
    _EventInline = admin.TabularInline

PAYLOAD_PREVIEW = 4000
LIST_ERROR_CHARS = 80


class ReadOnlyAdmin:
    """Rows are written by services only; staff look, and act through actions."""

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ClaimEventInline(ReadOnlyAdmin, _EventInline):
    model = ClaimEvent
    extra = 0
    can_delete = False
    fields = ("at", "kind", "from_status", "to_status", "actor", "who", "message")
    readonly_fields = fields
    ordering = ("id",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ClaimEvent]:
        return super().get_queryset(request).select_related("user")

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


def _short(text: str, chars: int) -> str:
    return Truncator(text.replace("\n", " ")).chars(chars)


@admin.register(ClaimRecord)
class ClaimRecordAdmin(
    LifecycleAdminMixin, ConsoleAdminMixin, ReadOnlyAdmin, _ClaimAdmin
):
    list_display = (
        "claim_id",
        "status_badge",
        "asset_did",
        "role",
        "attempts",
        "error_summary",
        "updated_at",
    )
    list_select_related = ("asset",)
    list_filter = (
        "status",
        "role",
        "created_at",
        AssetKindFilter,
        ExpiresWithinFilter,
        LifecycleEndedFilter,
    )
    search_fields = ("=asset__did", "claim_id", "=tx_hash", "=cid")
    date_hierarchy = "created_at"
    ordering = ("-id",)
    show_full_result_count = False
    list_per_page = 100
    actions = ("retry_publication", "export_csv", "renew_now")

    def get_urls(self) -> list[Any]:
        # The expiry calendar (console.lifecycle) before the model's own URLs.
        return [*self.lifecycle_urls(), *super().get_urls()]

    inlines = (ClaimEventInline,)
    fieldsets = (
        (None, {"fields": ("asset_link", "claim_id", "role", "role_version")}),
        ("State", {"fields": ("status_badge", "readable_error", "attempts")}),
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
                    "created_at",
                    "issued_at",
                    "published_at",
                    "next_retry_at",
                    "updated_at",
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
        "readable_error",
        "attempts",
        "issuer_did",
        "cid",
        "service_id",
        "tx_hash",
        "block_number",
        "rejection_reason",
        "token_preview",
        "created_at",
        "issued_at",
        "published_at",
        "next_retry_at",
        "updated_at",
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
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ClaimRecord], search_term: str
    ) -> tuple[QuerySet[ClaimRecord], bool]:
        # A DID in any form (legacy, chain id, lowercase) or a bare address finds
        # the asset's claims; a tx hash matches whatever its case.
        address = searched_address(search_term)
        if address is not None:
            return queryset.filter(asset__address=address), False
        tx_hash = searched_tx_hash(search_term)
        if tx_hash is not None:
            return queryset.filter(tx_hash__iexact=tx_hash), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="asset", ordering="asset__did")
    def asset_did(self, obj: ClaimRecord) -> str:
        return obj.asset.did

    @admin.display(description="asset")
    def asset_link(self, obj: ClaimRecord) -> SafeString:
        from django.urls import reverse

        url = reverse("admin:assets_asset_change", args=[obj.asset_id])
        return format_html('<a href="{}">{}</a>', url, obj.asset.did)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: ClaimRecord) -> SafeString:
        return badge(obj.status, obj.get_status_display())

    @admin.display(description="last error")
    def error_summary(self, obj: ClaimRecord) -> str:
        return _short(obj.last_error, LIST_ERROR_CHARS) if obj.last_error else ""

    @admin.display(description="last error")
    def readable_error(self, obj: ClaimRecord) -> SafeString | str:
        if not obj.last_error:
            return "none"
        return format_html(
            '<pre style="white-space:pre-wrap;margin:0">{}</pre>', obj.last_error
        )

    @admin.display(description="issued credential")
    def token_preview(self, obj: ClaimRecord) -> str:
        # Public (it ends up in the DID document); shortened for the page.
        return _short(obj.token, 60) if obj.token else ""

    @admin.action(
        description="Retry publication of selected failed claims",
        permissions=["retry_publication"],
    )
    def retry_publication(
        self, request: HttpRequest, queryset: QuerySet[ClaimRecord]
    ) -> HttpResponse | None:
        failed = queryset.filter(status=ClaimStatus.FAILED)
        confirm = self.confirm_or_none(
            request,
            queryset,
            action="retry_publication",
            title="Retry publication?",
            summary=(
                f"{failed.count()} of the selected claims are failed and will go "
                "back to the step they failed at; the listener then publishes "
                "them (never twice). Claims that are not failed are left alone."
            ),
        )
        if confirm is not None:
            return confirm
        # Only the failed rows are loaded: "select all" on a big list may name
        # 100,000 claims of which a few are failed.
        selected = queryset.count()
        claims = list(failed.select_related("asset"))
        result = console_services.claims_retry_publication(
            claims=claims, actor_user=request.user
        )
        by_pk = {claim.pk: claim for claim in claims}
        self.log_staff_action(
            request,
            [by_pk[pk] for pk in result.scheduled],
            "Retry publication scheduled.",
        )
        parts = [f"{len(result.scheduled)} scheduled"]
        skipped = selected - len(result.scheduled)
        if skipped:
            parts.append(f"{skipped} skipped (not failed)")
        level = messages.SUCCESS if result.scheduled else messages.WARNING
        self.message_user(request, message_for("Retry publication", parts), level)
        return None

    @admin.action(
        description="Export selected claims as CSV", permissions=["export_csv"]
    )
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[ClaimRecord]
    ) -> HttpResponseBase:
        queryset = queryset.order_by("id")
        console_services.claims_note_export(
            claim_ids=queryset.values_list("pk", flat=True).iterator(chunk_size=2000),
            actor_user=request.user,
        )
        return self.export_csv_response(
            request, queryset.select_related("asset"), "claims.csv"
        )


@admin.register(InboundMessage)
class InboundMessageAdmin(ConsoleAdminMixin, ReadOnlyAdmin, _InboundAdmin):
    list_display = (
        "id",
        "subject",
        "kind",
        "outcome_badge",
        "reason_summary",
        "asset_did",
        "claim_id",
        "received_at",
    )
    list_filter = ("outcome", "kind", "listener", "received_at")
    search_fields = ("=asset_did", "claim_id", "subject")
    date_hierarchy = "received_at"
    ordering = ("-id",)
    show_full_result_count = False
    list_per_page = 100
    actions = ("export_csv",)
    fields = (
        "subject",
        "kind",
        "outcome_badge",
        "reason",
        "asset_did",
        "claim_id",
        "record",
        "payload_preview",
        "payload_size",
        "truncated",
        "stream_key",
        "attempts",
        "received_at",
        "processed_at",
        "listener",
        "requested_by_label",
    )
    readonly_fields = fields
    csv_columns = (
        ("id", lambda m: m.pk),
        ("subject", lambda m: m.subject),
        ("kind", lambda m: m.kind),
        ("outcome", lambda m: m.outcome),
        ("reason", lambda m: m.reason),
        ("asset_did", lambda m: m.asset_did),
        ("claim_id", lambda m: m.claim_id),
        ("received_at", lambda m: m.received_at.isoformat()),
    )

    def get_search_results(
        self,
        request: HttpRequest,
        queryset: QuerySet[InboundMessage],
        search_term: str,
    ) -> tuple[QuerySet[InboundMessage], bool]:
        # Stored DIDs are canonical (did:ethr:<chain>:<EIP-55>): match by address.
        address = searched_address(search_term)
        if address is not None:
            return queryset.filter(asset_did__endswith=f":{address}"), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, obj: InboundMessage) -> SafeString:
        return badge(obj.outcome, obj.get_outcome_display())

    @admin.display(description="reason")
    def reason_summary(self, obj: InboundMessage) -> str:
        return _short(obj.reason, LIST_ERROR_CHARS)

    @admin.display(description="payload")
    def payload_preview(self, obj: InboundMessage) -> SafeString:
        text = obj.payload
        note = ""
        if len(text) > PAYLOAD_PREVIEW:
            text = text[:PAYLOAD_PREVIEW]
            note = f"… shown {PAYLOAD_PREVIEW} of {len(obj.payload)} characters"
        if obj.truncated:
            note += f" (received {obj.payload_size} bytes; stored truncated)"
        # format_html escapes the payload: it is whatever a peer sent.
        return format_html(
            '<pre style="white-space:pre-wrap;max-height:30em;overflow:auto">{}</pre>'
            "<div>{}</div>",
            text,
            note,
        )

    @admin.action(
        description="Export selected messages as CSV", permissions=["export_csv"]
    )
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[InboundMessage]
    ) -> HttpResponseBase:
        return self.export_csv_response(request, queryset.order_by("id"), "inbox.csv")

    def get_queryset(self, request: HttpRequest) -> QuerySet[InboundMessage]:
        # The list never needs the payload; the detail page loads it.
        queryset = super().get_queryset(request)
        match = request.resolver_match
        if match is not None and (match.url_name or "").endswith("changelist"):
            return queryset.defer("payload")
        return queryset


@admin.register(ListenerHeartbeat)
class ListenerHeartbeatAdmin(ReadOnlyAdmin, _HeartbeatAdmin):
    list_display = ("name", "state_badge", "last_heartbeat", "mode", "host", "pid")
    readonly_fields = (
        "name",
        "state",
        "last_heartbeat",
        "started_at",
        "pid",
        "host",
        "mode",
        "details",
    )

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: ListenerHeartbeat) -> SafeString:
        return badge(obj.state, obj.get_state_display())
