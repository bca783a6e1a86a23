"""Admin for assets. Key material, plaintext or ciphertext, is never rendered.

`AssetKey` is not registered, and the asset form shows only which master key sealed
the asset's key (a read-only line), never the nonce or ciphertext. Address and DID are
read-only after creation: they are derived from the key.

The console adds (never touching the key): the prequalification status and the last
claim event per row (two subqueries, so the list costs the same queries for any
number of rows), the asset's claim history and its DID document resolved from chain
on the asset page, and the operator actions: reconcile, request prequalification,
CSV export, each calling one service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from assets.models import Asset, AssetKey, OperatorAccount, SignerBackend
from claims.inbox import CONSOLE_LISTENER
from claims.models import (
    OPEN_STATUSES,
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
)
from console import services as console_services
from console.admin.claims import (
    RETRY_SUMMARY,
    claim_reason,
    retry_headline,
    retry_result_text,
)
from console.admin.site import (
    ConsoleAdminMixin,
    age,
    badge,
    chain_unit,
    detail_action,
    in_chain_unit,
    message_for,
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
class AssetAdmin(ConsoleAdminMixin, _AssetModelAdmin):
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

    def _queued_summary(self, what: str) -> str:

        return (
            f"More assets than the console handles while the page waits "
            f"({console_services.sync_asset_limit()}): they are queued for the "
            f"listener, which {what} in its workers, in your name. Follow them under "
            "Inbound messages (listener: console). Queuing the same assets again "
            "within a few minutes queues nothing twice."
        )

    def _report(
        self, request: HttpRequest, label: str, parts: list[str], errors: list[str]
    ) -> None:
        """An in-request action's result line, then its first ten errors."""
        level = messages.WARNING if errors else messages.SUCCESS
        self.message_user(request, message_for(label, parts), level)
        for error in errors[:10]:
            self.message_user(request, error, messages.ERROR)

    def _report_queued(
        self,
        request: HttpRequest,
        assets: list[Asset],
        result: console_services.QueueResult,
        *,
        label: str,
    ) -> None:
        self.log_staff_action(request, assets, f"{label} queued for the listener.")
        parts = [f"{result.queued} assets queued for the listener"]
        if result.already_queued:
            parts.append(f"{result.already_queued} already queued")
        self.message_user(request, message_for(label, parts), messages.SUCCESS)
        queue = reverse("admin:claims_inboundmessage_changelist")
        self.message_user(
            request,
            format_html(
                'Follow them in <a href="{}?listener={}">the inbound messages queued '
                "in the console</a>.",
                queue,
                CONSOLE_LISTENER,
            ),
            messages.INFO,
        )

    @admin.action(
        description="Reconcile selected assets with the chain",
        permissions=["reconcile_assets"],
    )
    def reconcile(
        self, request: HttpRequest, queryset: QuerySet[Asset]
    ) -> HttpResponse | None:

        queued = console_services.selection_is_queued(queryset.count())
        confirm = self.confirm_or_none(
            request,
            queryset,
            action="reconcile",
            title="Reconcile assets?",
            summary=(
                "Each asset's accepted claims on the cache server are compared with "
                "its DID document on chain; what is missing is published (never "
                "twice). "
                + (
                    self._queued_summary("reconciles each asset")
                    if queued
                    else "This calls the cache server and the chain now."
                )
            ),
        )
        if confirm is not None:
            return confirm
        self._reconcile(request, list(queryset))
        return None

    def _reconcile(self, request: HttpRequest, assets: list[Asset]) -> None:
        outcome = console_services.assets_reconcile_or_queue(
            assets=assets, actor_user=request.user
        )
        result = outcome.report
        if result is None:
            assert outcome.queued is not None
            self._report_queued(request, assets, outcome.queued, label="Reconcile")
            return
        self.log_staff_action(request, assets, "Reconciled with the chain.")
        parts = [
            f"{result.assets} assets",
            f"{result.published} published",
            f"{result.already_present} already on chain",
            f"{result.failed} failed",
            f"{result.pending} pending",
            f"{result.rejected} rejected",
            f"{len(result.errors)} errors",
        ]
        self._report(request, "Reconcile", parts, result.failures + result.errors)

    @admin.action(
        description="Request prequalification for selected assets",
        permissions=["request_prequalification"],
    )
    def request_prequalification(
        self, request: HttpRequest, queryset: QuerySet[Asset]
    ) -> HttpResponse | None:

        queued = console_services.selection_is_queued(queryset.count())
        confirm = self.confirm_or_none(
            request,
            queryset,
            action="request_prequalification",
            title="Request prequalification?",
            summary=(
                "A prequalification claim request is filed on the cache server for "
                "each asset, signed by the asset. A request already pending there is "
                "left as it is."
                + (" " + self._queued_summary("files each request") if queued else "")
            ),
        )
        if confirm is not None:
            return confirm
        self._prequalify(request, list(queryset))
        return None

    def _prequalify(self, request: HttpRequest, assets: list[Asset]) -> None:
        outcome = console_services.assets_prequalify_or_queue(
            assets=assets, actor_user=request.user
        )
        result = outcome.report
        if result is None:
            assert outcome.queued is not None
            self._report_queued(
                request, assets, outcome.queued, label="Prequalification"
            )
            return
        self.log_staff_action(request, assets, "Prequalification requested.")
        parts = [
            f"{result.filed} filed",
            f"{result.already_pending} already pending",
            f"{len(result.errors)} errors",
        ]
        self._report(request, "Prequalification", parts, result.errors)

    # --- detail-page actions: confirm (GET), act (POST), back to the page -----------

    def _detail(
        self,
        request: HttpRequest,
        object_id: str,
        *,
        title: str,
        headline: str,
        summary: str,
        run: Any,
        nothing: str = "",
    ) -> HttpResponse:
        asset = get_object_or_404(Asset, pk=object_id)
        back = reverse("admin:assets_asset_change", args=[asset.pk])
        if request.method != "POST" or request.POST.get("confirm") != "yes" or nothing:
            return self.confirm_page(
                request,
                title=title,
                headline=headline,
                summary=summary,
                preview=[f"{asset} ({asset.did})"],
                back=back,
                nothing=nothing,
            )
        run(request, asset)
        return redirect(back)

    @detail_action(
        description="Reconcile",
        permissions=["reconcile_assets"],
        url_path="reconcile",
        icon="sync",
    )
    def reconcile_detail(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._detail(
            request,
            object_id,
            title="Reconcile this asset?",
            headline="Reconcile 1 asset with the chain.",
            summary=(
                "Its accepted claims on the cache server are compared with its DID "
                "document on chain; what is missing is published (never twice). "
                "This calls the cache server and the chain now."
            ),
            run=lambda request, asset: self._reconcile(request, [asset]),
        )

    @detail_action(
        description="Request prequalification",
        permissions=["request_prequalification"],
        url_path="request-prequalification",
        icon="send",
    )
    def prequalify_detail(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._detail(
            request,
            object_id,
            title="Request prequalification?",
            headline="File 1 prequalification claim request.",
            summary=(
                "A prequalification claim request is filed on the cache server for "
                "this asset, signed by the asset. A request already pending there is "
                "left as it is."
            ),
            run=lambda request, asset: self._prequalify(request, [asset]),
        )

    @detail_action(
        description="Retry failed claims",
        permissions=["retry_publication"],
        url_path="retry-failed",
        icon="replay",
    )
    def retry_failed_detail(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Retry the asset's failed claims (after funding its address, say)."""
        failed = list(
            ClaimRecord.objects.filter(
                asset_id=object_id, status=ClaimStatus.FAILED
            ).select_related("asset")
        )
        total = ClaimRecord.objects.filter(asset_id=object_id).count()

        def run(request: HttpRequest, asset: Asset) -> None:
            result = console_services.claims_retry_publication(
                claims=failed, actor_user=request.user
            )
            self.log_staff_action(
                request,
                [claim for claim in failed if claim.pk in set(result.scheduled)],
                "Retry publication scheduled.",
            )
            self.message_user(
                request,
                retry_result_text(len(result.scheduled), total - len(result.scheduled)),
                messages.SUCCESS if result.scheduled else messages.WARNING,
            )

        return self._detail(
            request,
            object_id,
            title="Retry publication?",
            headline=retry_headline(len(failed)),
            summary=RETRY_SUMMARY,
            run=run,
            nothing=(
                "" if failed else "This asset has no failed claim: nothing to retry."
            ),
        )

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


if TYPE_CHECKING:
    _OperatorModelAdmin = admin.ModelAdmin[OperatorAccount]
else:
    _OperatorModelAdmin = admin.ModelAdmin


@admin.register(OperatorAccount)
class OperatorAccountAdmin(_OperatorModelAdmin):
    """Read-only: operators come from generate_operator_key / import_operator_key.

    Only the named columns are loaded and shown; the envelope stays deferred.
    """

    list_display = ("label", "address", "chain", "sealed_with", "created_at")
    fields = ("label", "address", "chain", "sealed_with", "created_at", "updated_at")
    readonly_fields = fields
    search_fields = ("label", "address")
    ordering = ("id",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[OperatorAccount]:
        return super().get_queryset(request).defer("nonce", "ciphertext")

    @admin.display(description="key")
    def sealed_with(self, obj: OperatorAccount) -> str:
        return f"sealed with {obj.key_id}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: OperatorAccount | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: OperatorAccount | None = None
    ) -> bool:
        # Deleting the row destroys the only copy of the operator key.
        return False
