"""The operator actions on assets, as list actions and detail-page buttons.

Reconcile, request prequalification (both run while the page waits, or are queued for
the listener above `CONSOLE_SYNC_ASSET_LIMIT` assets) and retry an asset's failed
claims. Each asks for confirmation, calls one console service, reports the result and
writes the admin log. Mixed into `console.admin.assets.AssetAdmin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.html import format_html

from assets.models import Asset
from claims.inbox import CONSOLE_LISTENER
from claims.models import ClaimRecord, ClaimStatus
from console import services as console_services
from console.admin.claims import RETRY_SUMMARY, retry_headline, retry_result_text
from console.admin.site import ConsoleAdminMixin, detail_action, message_for

if TYPE_CHECKING:
    _AdminBase = admin.ModelAdmin[Asset]
else:
    _AdminBase = object


class AssetActionsMixin(ConsoleAdminMixin, _AdminBase):
    """The asset admin's actions (its presentation is in `console.admin.assets`)."""

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
