"""Presentation helpers the console's ModelAdmins share: actions, badges, audit.

`ConsoleAdminMixin` gives a ModelAdmin
- the permission checks for the console's custom permissions (`@admin.action(
  permissions=["retry_publication"])` looks up `has_retry_publication_permission`),
- a 403 when someone posts an action they may not run (Django would only say "no
  action selected"), so a viewer who crafts the POST is refused, not ignored,
- a confirmation page (`confirm_or_none`) and the audit entry (`log_staff_action`),
- a CSV export of the selection that streams and never loads all rows at once.
No business logic: each action calls one service.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse

from console import groups
from console.display import (
    age,
    badge,
    chain_unit,
    exact_time,
    in_chain_unit,
    short_did,
    wei_in_chain_unit,
)
from evops.csvsafe import csv_cell

CONFIRM_FIELD = "confirm"
CONFIRM_PREVIEW = 20

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


def searched_address(term: str) -> str | None:
    """The EIP-55 address a search term names, if it is a DID or an address.

    Staff paste DIDs in every form the peers use: legacy `did:ethr:0x..`, a chain
    id instead of a name, lowercase hex. Stored DIDs are canonical, so a plain text
    match would miss those; the address is what identifies the asset.
    """
    from evops.protocol.dids import DID, normalize_address
    from evops.protocol.errors import DIDError

    term = term.strip()
    try:
        if term.startswith("did:"):
            return DID.parse(term).address
        if _ADDRESS.fullmatch(term):
            return normalize_address(term)
    except DIDError:
        return None
    return None


def searched_tx_hash(term: str) -> str | None:
    """The term, if it is a transaction hash (compared without regard to case)."""
    term = term.strip()
    return term if _TX_HASH.fullmatch(term) else None


_csv_cell = csv_cell  # the one CSV-injection guard (evops.csvsafe)


def _user_id(request: HttpRequest) -> int:
    # Admin views run behind admin_view: the user is a logged-in staff member.
    pk = request.user.pk
    if pk is None:
        raise PermissionDenied
    return int(pk)


class _Echo:
    def write(self, value: str) -> str:
        return value


class ConsoleAdminMixin:
    """Mixed into the console's ModelAdmins (before `admin.ModelAdmin`)."""

    csv_columns: Sequence[tuple[str, Callable[[Any], Any]]] = ()

    # --- permissions of the custom actions ------------------------------------------
    # List actions call these with the request; unfold's detail-page actions also
    # pass the object id (the permission is the same for every object).

    def has_retry_publication_permission(
        self, request: HttpRequest, object_id: Any = None
    ) -> bool:
        return request.user.has_perm(groups.RETRY_PUBLICATION)

    def has_reconcile_assets_permission(
        self, request: HttpRequest, object_id: Any = None
    ) -> bool:
        return request.user.has_perm(groups.RECONCILE_ASSETS)

    def has_request_prequalification_permission(
        self, request: HttpRequest, object_id: Any = None
    ) -> bool:
        return request.user.has_perm(groups.REQUEST_PREQUALIFICATION)

    def has_export_csv_permission(
        self, request: HttpRequest, object_id: Any = None
    ) -> bool:
        return request.user.has_perm(groups.EXPORT_CSV)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        posted = request.POST.get("action") if request.method == "POST" else None
        if posted and posted not in self.get_actions(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        return super().changelist_view(request, extra_context)  # type: ignore[misc,no-any-return]

    # --- confirmation and audit -----------------------------------------------------

    def confirm_or_none(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        *,
        action: str,
        title: str,
        summary: str,
        headline: str = "",
        nothing: str = "",
    ) -> TemplateResponse | None:
        """The confirmation page, or None once the user confirmed it.

        `headline` says exactly what will happen ("Retry 1 failed claim."); with
        `nothing` set (nothing would happen) the page says so and offers no button.
        """
        if request.POST.get(CONFIRM_FIELD) == "yes" and not nothing:
            return None
        count = queryset.count()
        context = {
            "action": action,
            "count": count,
            "preview": [str(obj) for obj in queryset[:CONFIRM_PREVIEW]],
            "more": max(0, count - CONFIRM_PREVIEW),
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "index": request.POST.get("index", "0"),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return self._confirm_response(
            request, title, headline, summary, nothing, context, back=""
        )

    def confirm_page(
        self,
        request: HttpRequest,
        *,
        title: str,
        headline: str,
        summary: str,
        preview: list[str],
        back: str,
        nothing: str = "",
    ) -> TemplateResponse:
        """The confirmation of a detail-page action (posts back to its own URL)."""
        context = {"count": len(preview), "preview": preview, "more": 0}
        return self._confirm_response(
            request, title, headline, summary, nothing, context, back=back
        )

    def _confirm_response(
        self,
        request: HttpRequest,
        title: str,
        headline: str,
        summary: str,
        nothing: str,
        context: dict[str, Any],
        *,
        back: str,
    ) -> TemplateResponse:
        opts = self.model._meta  # type: ignore[attr-defined]
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            **context,
            "title": title,
            "headline": headline,
            "summary": summary,
            "nothing": nothing,
            "opts": opts,
            "back": back,
            "confirm_field": CONFIRM_FIELD,
            "media": self.media,  # type: ignore[attr-defined]
        }
        return TemplateResponse(request, "admin/evops/confirm_action.html", context)

    def log_staff_action(
        self, request: HttpRequest, objects: Iterable[Model], message: str
    ) -> None:
        """One admin LogEntry per object, with the user and what was done."""
        objects = list(objects)
        if not objects:
            return
        LogEntry.objects.log_actions(
            user_id=_user_id(request),
            queryset=objects,
            action_flag=CHANGE,
            change_message=message,
        )

    # --- CSV ------------------------------------------------------------------------

    def export_csv_response(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        filename: str,
        *,
        before_chunk: Callable[[list[Any]], object] | None = None,
    ) -> StreamingHttpResponse:
        """Stream the selection (all of it with "select all") as CSV.

        The header row goes out before any query, so the first byte leaves at once
        even for 100,000 rows. `before_chunk(objects)` runs for each chunk of rows
        just before they are streamed (the claims' "exported" history is written so,
        one INSERT per chunk): the audit trail names exactly what was handed out,
        and it never delays the start of the download.
        """
        columns = self.csv_columns
        model = self.model  # type: ignore[attr-defined]
        LogEntry.objects.create(
            user_id=_user_id(request),
            content_type=ContentType.objects.get_for_model(model),
            object_id=None,
            object_repr=f"CSV export of {filename}"[:200],
            action_flag=CHANGE,
            change_message=f"Exported as CSV by {request.user.get_username()}.",
        )
        writer = csv.writer(_Echo())

        def chunk_rows(chunk: list[Any]) -> Iterator[str]:
            if before_chunk is not None:
                before_chunk(chunk)
            for obj in chunk:
                yield writer.writerow([_csv_cell(get(obj)) for _, get in columns])

        def rows() -> Iterator[str]:
            yield writer.writerow([name for name, _ in columns])
            chunk: list[Any] = []
            for obj in queryset.iterator(chunk_size=_CSV_CHUNK):
                chunk.append(obj)
                if len(chunk) >= _CSV_CHUNK:
                    yield from chunk_rows(chunk)
                    chunk = []
            if chunk:
                yield from chunk_rows(chunk)

        response = StreamingHttpResponse(rows(), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response


_View = TypeVar("_View", bound=Callable[..., Any])

# Rows fetched, noted and streamed together by a CSV export.
_CSV_CHUNK = 2000


class ReadOnlyAdmin:
    """Rows are written by services only; staff look, and act through actions."""

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def detail_action(
    *, description: str, permissions: list[str], url_path: str, icon: str
) -> Callable[[_View], _View]:
    """unfold's `@action` for a detail-page button, typed for mypy.

    `permissions` name `has_<name>_permission` methods of the admin (unfold checks
    them before the view runs, and hides the button from whoever lacks them).
    """
    from unfold.decorators import action

    return cast(
        Callable[[_View], _View],
        action(
            description=description,
            permissions=permissions,
            url_path=url_path,
            icon=icon,
        ),
    )


def message_for(action: str, parts: Sequence[str]) -> str:
    """`Retry publication: 3 scheduled, 1 skipped.`"""
    return f"{action}: {', '.join(parts)}." if parts else f"{action}: nothing to do."


__all__ = [
    "ConsoleAdminMixin",
    "admin",
    "age",
    "badge",
    "chain_unit",
    "detail_action",
    "exact_time",
    "in_chain_unit",
    "message_for",
    "searched_address",
    "searched_tx_hash",
    "short_did",
    "wei_in_chain_unit",
]
