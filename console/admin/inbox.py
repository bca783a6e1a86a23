"""Admin for the inbox: every received or console-queued message, read-only.

Each row shows the asset and claim the message concerns (its own record, its
original's for a duplicate, else by claim id or DID), its outcome and why; failed
messages are handed back to the listener through the console services. The cache
server's request-for-issuers notices are hidden unless asked for.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import BigIntegerField, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from assets.models import Asset
from claims.message_columns import REASON_FOR_ISSUERS
from claims.models import ClaimRecord, InboundMessage, MessageKind, MessageOutcome
from console import services as console_services
from console.admin.site import (
    ConsoleAdminMixin,
    ReadOnlyAdmin,
    age,
    badge,
    searched_address,
    short_did,
    wei_in_chain_unit,
)
from console.display import LIST_ERROR_CHARS, short_text

if TYPE_CHECKING:
    _InboundAdmin = admin.ModelAdmin[InboundMessage]
else:
    from unfold.admin import ModelAdmin as _InboundAdmin

PAYLOAD_PREVIEW = 4000


_DUPLICATE_OF = re.compile(r"duplicate of message #(\d+)")


class NoticeFilter(admin.SimpleListFilter):
    """Hides the cache server's request-for-issuers notices unless asked.

    They go to every listener on the issuers' subject, concern no asset of ours,
    and were half the inbox; `?notices=shown` lists them too.
    """

    title = "request-for-issuers notices"
    parameter_name = "notices"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("shown", "shown")]

    def choices(self, changelist: Any) -> Any:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "hidden",
        }
        yield {
            "selected": self.value() == "shown",
            "query_string": changelist.get_query_string({self.parameter_name: "shown"}),
            "display": "shown",
        }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "shown":
            return queryset
        return queryset.exclude(
            outcome=MessageOutcome.IGNORED, reason=REASON_FOR_ISSUERS
        )


def _concerned(queryset: QuerySet[InboundMessage]) -> QuerySet[InboundMessage]:
    """Annotate the asset and claim a message concerns.

    Its own claim record first; for a duplicate, its original's; then the claim our
    records know by its claim id (a rejection notice names the TSO's DID, but the
    claim id is ours); then the asset its DID names.
    """
    original = InboundMessage.objects.filter(
        dedupe_key=OuterRef("dedupe_key"), record__isnull=False
    ).order_by("id")
    by_claim_id = ClaimRecord.objects.filter(claim_id=OuterRef("claim_id")).exclude(
        claim_id=""
    )
    by_did = Asset.objects.filter(did=OuterRef("asset_did"))
    original_kind = (
        InboundMessage.objects.filter(dedupe_key=OuterRef("dedupe_key"))
        .exclude(kind=MessageKind.UNKNOWN)
        .order_by("id")
        .values("kind")[:1]
    )
    queryset = queryset.annotate(
        concern_record=Coalesce(
            F("record_id"),
            Subquery(original.values("record_id")[:1]),
            Subquery(by_claim_id.values("pk")[:1]),
            output_field=BigIntegerField(),
        ),
    ).annotate(
        concern_asset=Coalesce(
            Subquery(
                ClaimRecord.objects.filter(pk=OuterRef("concern_record")).values(
                    "asset_id"
                )[:1]
            ),
            Subquery(by_did.values("pk")[:1]),
            output_field=BigIntegerField(),
        ),
        original_kind=Subquery(original_kind),
    )
    return queryset.annotate(
        concern_label=Subquery(
            Asset.objects.filter(pk=OuterRef("concern_asset")).values("label")[:1]
        ),
        concern_did=Subquery(
            Asset.objects.filter(pk=OuterRef("concern_asset")).values("did")[:1]
        ),
    )


MSG_MESSAGE_RETRIED = "Handed back to the listener (staff retry)."
MSG_MESSAGES_RETRIED = (
    "Retry: {retried} handed back to the listener; {skipped} skipped: not failed."
)


@admin.register(InboundMessage)
class InboundMessageAdmin(ConsoleAdminMixin, ReadOnlyAdmin, _InboundAdmin):
    list_display = (
        "concern_asset_link",
        "kind_label",
        "outcome_badge",
        "reason_summary",
        "concern_claim_link",
        "received",
    )
    list_display_links = ("kind_label",)
    list_filter = (NoticeFilter, "outcome", "kind", "listener")
    search_fields = ("=claim_id",)
    search_help_text = (
        "Asset DID or address (any form), label or external id, or claim id: exact."
    )
    ordering = ("-id",)
    show_full_result_count = False
    # A laptop screen shows about 12 rows; 50 keeps the page fast at any size.
    list_per_page = 50
    list_fullwidth = True
    actions = ("retry_failed_messages", "export_csv")
    fields = (
        "subject",
        "kind_label",
        "outcome_badge",
        "reason",
        "concern_asset_link",
        "concern_claim_link",
        "asset_did",
        "claim_id",
        "payload_preview",
        "payload_size",
        "truncated",
        "stream_key",
        "attempts",
        "received",
        "processed",
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
        # Messages about an asset: those naming it, those of its claims (a rejection
        # names the TSO's DID but our claim id). Exact, indexed lookups only.
        term = search_term.strip()
        if not term:
            return queryset, False
        address = searched_address(term)
        if address is not None:
            assets = Asset.objects.filter(address=address)
        else:
            assets = Asset.objects.filter(Q(label=term) | Q(external_id=term))
        asset_rows = list(assets.values_list("pk", "did")[:1000])
        if not asset_rows:
            return queryset.filter(claim_id=term), False
        dids = [did for _, did in asset_rows]
        claim_ids = list(
            ClaimRecord.objects.filter(asset_id__in=[pk for pk, _ in asset_rows])
            .exclude(claim_id="")
            .values_list("claim_id", flat=True)[:5000]
        )
        return (
            queryset.filter(
                Q(asset_did__in=dids)
                | Q(claim_id__in=claim_ids)
                | Q(record__asset_id__in=[pk for pk, _ in asset_rows])
            ),
            False,
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[InboundMessage]:
        queryset = _concerned(super().get_queryset(request))
        # The list never needs the payload; the detail page loads it.
        match = request.resolver_match
        if match is not None and (match.url_name or "").endswith("changelist"):
            return queryset.defer("payload")
        return queryset

    @admin.display(description="asset")
    def concern_asset_link(self, obj: InboundMessage) -> SafeString | str:
        pk = getattr(obj, "concern_asset", None)
        if pk is None:
            return format_html(
                '<span title="{}">none of ours</span>', obj.asset_did or "no DID"
            )
        url = reverse("admin:assets_asset_change", args=[pk])
        did = getattr(obj, "concern_did", "") or ""
        return format_html(
            '<a href="{}" title="{}">{}</a>',
            url,
            did,
            getattr(obj, "concern_label", "") or short_did(did),
        )

    @admin.display(description="claim")
    def concern_claim_link(self, obj: InboundMessage) -> SafeString | str:
        pk = getattr(obj, "concern_record", None)
        if pk is None:
            return obj.claim_id or ""
        url = reverse("admin:claims_claimrecord_change", args=[pk])
        return format_html(
            '<a href="{}">{}</a>', url, short_text(obj.claim_id or f"#{pk}", 24)
        )

    @admin.display(description="kind", ordering="kind")
    def kind_label(self, obj: InboundMessage) -> SafeString | str:
        match = _DUPLICATE_OF.search(obj.reason or "")
        if match is None:
            return obj.get_kind_display()
        kind = getattr(obj, "original_kind", None) or obj.kind
        label = dict(MessageKind.choices).get(kind, kind)
        url = reverse("admin:claims_inboundmessage_change", args=[match.group(1)])
        return format_html(
            '{} <a href="{}">(duplicate of #{})</a>', label, url, match.group(1)
        )

    @admin.display(description="outcome", ordering="outcome")
    @admin.action(
        description="Retry selected failed messages (a failed request is filed again)",
        permissions=["retry_publication"],
    )
    def retry_failed_messages(
        self, request: HttpRequest, queryset: QuerySet[InboundMessage]
    ) -> None:
        """A message that gave up (a prequalification request with the cache server
        or the chain down past MAX_ATTEMPTS has no claim to retry) goes back to the
        listener, which handles it like a new one."""
        selected = queryset.count()
        retried = console_services.messages_retry_failed(
            messages=list(queryset.filter(outcome=MessageOutcome.FAILED)),
            actor_user=request.user,
        )
        for message in retried:
            self.log_change(request, message, MSG_MESSAGE_RETRIED)
        self.message_user(
            request,
            MSG_MESSAGES_RETRIED.format(
                retried=len(retried), skipped=selected - len(retried)
            ),
            messages.SUCCESS if retried else messages.WARNING,
        )

    def outcome_badge(self, obj: InboundMessage) -> SafeString:
        return badge(obj.outcome, obj.get_outcome_display())

    @admin.display(description="reason")
    def reason_summary(self, obj: InboundMessage) -> SafeString:
        text = wei_in_chain_unit(obj.reason)
        return format_html(
            '<span class="evops-reason" title="{}">{}</span>',
            text,
            short_text(text, LIST_ERROR_CHARS),
        )

    @admin.display(description="received", ordering="received_at")
    def received(self, obj: InboundMessage) -> SafeString | str:
        return age(obj.received_at)

    @admin.display(description="processed")
    def processed(self, obj: InboundMessage) -> SafeString | str:
        return age(obj.processed_at) or "not yet"

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
            '<pre class="evops-payload">{}</pre><div>{}</div>', text, note
        )

    @admin.action(
        description="Export selected messages as CSV", permissions=["export_csv"]
    )
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[InboundMessage]
    ) -> HttpResponseBase:
        return self.export_csv_response(request, queryset.order_by("id"), "inbox.csv")
