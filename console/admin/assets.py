"""Admin for assets. Key material, plaintext or ciphertext, is never rendered.

`AssetKey` is not registered, and the asset form shows only which master key sealed
the asset's key (a read-only line), never the nonce or ciphertext. Address and DID are
read-only after creation: they are derived from the key.

The console adds (never touching the key): the prequalification status and the last
claim event per row (two subqueries, so the list costs the same queries for any
number of rows), the asset's claim history and its DID document resolved from chain
on the asset page, and the operator actions (`console.admin.asset_actions`):
reconcile, request prequalification, retry failed claims, and CSV export, each
calling one service. Operator accounts are in `console.admin.operators`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from assets.models import Asset, AssetKey, SignerBackend
from claims.models import OPEN_STATUSES, ClaimEvent, ClaimRecord, ClaimStatus
from console.admin.asset_actions import AssetActionsMixin
from console.admin.claims import claim_reason
from console.admin.site import (
    age,
    badge,
    chain_unit,
    in_chain_unit,
    searched_address,
    short_did,
)
from console.dashboard import address_balance, resolve_did_document
from console.services import EXPORT_EVENT

if TYPE_CHECKING:
    _AssetModelAdmin = admin.ModelAdmin[Asset]
else:
    from unfold.admin import ModelAdmin as _AssetModelAdmin

PREQUALIFICATION_STATES = (
    ("none", "not requested"),
    ("requested", "requested (open)"),
    ("published", "published"),
    ("failed", "failed"),
    ("rejected", "rejected"),
)
BALANCE_UNAVAILABLE = "unavailable: the chain did not answer ({error})"


class PrequalificationFilter(admin.SimpleListFilter):
    """Assets by the state of their latest claim ("who isn't prequalified?")."""

    title = "prequalification"
    parameter_name = "prequalification"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(PREQUALIFICATION_STATES)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "none":
            return queryset.filter(claim_status__isnull=True)
        if value == "requested":
            return queryset.filter(claim_status__in=OPEN_STATUSES)
        if value in (ClaimStatus.PUBLISHED, ClaimStatus.FAILED, ClaimStatus.REJECTED):
            return queryset.filter(claim_status=value)
        return queryset


CLAIM_HISTORY_LIMIT = 50


@admin.register(Asset)
class AssetAdmin(AssetActionsMixin, _AssetModelAdmin):
    list_display = (
        "name",
        "short_did",
        "prequalification",
        "reason",
        "last_event",
        "kind",
    )
    list_display_links = ("name",)
    list_filter = (PrequalificationFilter, "kind", "active", "chain")
    # 10,000 assets: a substring scan is cheap here (not on the claims).
    search_fields = ("did", "address", "external_id", "label")
    search_help_text = "Label, external id (or part of them), DID or address."
    # A laptop screen shows about 12 rows; 50 keeps the page fast at any size.
    list_per_page = 50
    list_fullwidth = True
    actions_detail = ("reconcile_detail", "prequalify_detail", "retry_failed_detail")
    ordering = ("-created_at", "-id")
    fields = (
        "did",
        "address",
        "chain",
        "kind",
        "external_id",
        "label",
        "active",
        "key_custody",
        "created_at",
        "updated_at",
    )
    readonly_fields = (
        "did",
        "address",
        "chain",
        "key_custody",
        "created_at",
        "updated_at",
    )
    show_full_result_count = False
    actions = ("reconcile", "request_prequalification", "export_csv")
    change_form_template = "admin/assets/asset/change_form.html"
    csv_columns = (
        ("did", lambda a: a.did),
        ("address", lambda a: a.address),
        ("kind", lambda a: a.kind),
        ("external_id", lambda a: a.external_id),
        ("label", lambda a: a.label),
        ("active", lambda a: a.active),
        ("prequalification", lambda a: a.claim_status or ""),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Asset]:

        latest_claim = ClaimRecord.objects.filter(asset=OuterRef("pk")).order_by("-id")
        # What last happened to the asset's claims: a CSV export is in their history
        # (who took the data) but did not happen to them.
        latest_event = (
            ClaimEvent.objects.filter(record__asset=OuterRef("pk"))
            .exclude(kind=EXPORT_EVENT)
            .order_by("-id")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                claim_status=Subquery(latest_claim.values("status")[:1]),
                claim_error=Subquery(latest_claim.values("last_error")[:1]),
                claim_rejection=Subquery(latest_claim.values("rejection_reason")[:1]),
                event_kind=Subquery(latest_event.values("kind")[:1]),
                event_at=Subquery(latest_event.values("at")[:1]),
            )
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Asset], search_term: str
    ) -> tuple[QuerySet[Asset], bool]:
        # A DID in any form the peers use, or an address in any case, is one asset.
        address = searched_address(search_term)
        if address is not None:
            return queryset.filter(address=address), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="asset", ordering="label")
    def name(self, obj: Asset) -> str:
        return obj.label or obj.external_id or "(no label)"

    @admin.display(description="DID", ordering="did")
    def short_did(self, obj: Asset) -> SafeString | str:
        return short_did(obj.did)

    @admin.display(description="prequalification")
    def prequalification(self, obj: Asset) -> SafeString:
        status = getattr(obj, "claim_status", None) or ""
        return badge(status, status or "not requested")

    @admin.display(description="reason")
    def reason(self, obj: Asset) -> SafeString | str:
        status = getattr(obj, "claim_status", None)
        if not status:
            return "no claim requested yet"
        text = claim_reason(
            status,
            getattr(obj, "claim_error", "") or "",
            getattr(obj, "claim_rejection", "") or "",
        )
        return format_html(
            '<span class="evops-reason" title="{}">{}</span>',
            text,
            text if len(text) <= 160 else text[:159] + "…",
        )

    @admin.display(description="last event")
    def last_event(self, obj: Asset) -> SafeString | str:
        kind = getattr(obj, "event_kind", None)
        at = getattr(obj, "event_at", None)
        if not kind or at is None:
            return ""
        return format_html("{} · {}", kind, age(at))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:

        extra = dict(extra_context or {})
        asset = self.get_object(request, object_id)
        if asset is not None:
            claims = list(
                ClaimRecord.objects.filter(asset=asset)
                .order_by("-id")
                .only(
                    "id",
                    "claim_id",
                    "role",
                    "status",
                    "cid",
                    "tx_hash",
                    "last_error",
                    "updated_at",
                    "token_sha256",
                )[:CLAIM_HISTORY_LIMIT]
            )
            hashes = {c.token_sha256: c.pk for c in claims if c.token_sha256}
            extra["claim_history"] = [
                {
                    "claim": c,
                    "badge": badge(c.status, c.get_status_display()),
                    "reason": claim_reason(c.status, c.last_error, ""),
                    "updated": age(c.updated_at),
                }
                for c in claims
            ]
            extra["did_document"] = resolve_did_document(asset.did, hashes)
            extra["funding"] = self._funding(request, asset, claims)
        return super().change_view(request, object_id, form_url, extra)

    def _funding(
        self, request: HttpRequest, asset: Asset, claims: list[ClaimRecord]
    ) -> dict[str, Any]:
        """Asset mode: the asset pays for its own writes, so show what it holds."""
        if settings.CHAIN_WRITE_MODE != "asset":
            return {}
        failed = sum(1 for claim in claims if claim.status == ClaimStatus.FAILED)
        try:
            balance = in_chain_unit(address_balance(asset.address))
        except Exception as exc:
            balance = BALANCE_UNAVAILABLE.format(error=type(exc).__name__)
        return {
            "balance": balance,
            "unit": chain_unit(),
            "address": asset.address,
            "failed": failed,
            # A viewer sees the balance, not the button.
            "can_retry": self.has_retry_publication_permission(request),
            "retry_url": reverse(
                "admin:assets_asset_retry_failed_detail", args=[asset.pk]
            ),
        }

    @admin.action(
        description="Export selected assets as CSV", permissions=["export_csv"]
    )
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[Asset]
    ) -> HttpResponseBase:
        return self.export_csv_response(request, queryset.order_by("id"), "assets.csv")

    @admin.display(description="key")
    def key_custody(self, obj: Asset) -> str:
        if obj.signer_backend == SignerBackend.PKCS11:
            return (
                f"in PKCS#11 token {obj.token_label!r}, key id {obj.token_key_id} "
                "(non-extractable)"
            )
        try:
            key = obj.key
        except AssetKey.DoesNotExist:
            return "no key stored"
        return (
            f"encrypted at rest ({key.algorithm}), sealed with master key {key.key_id}"
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Assets come from keys: generate_asset_keys / import_asset_keys.
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: Asset | None = None
    ) -> bool:
        # Deleting an asset destroys the only copy of its key; deactivate it instead.
        return False
