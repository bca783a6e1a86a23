"""Admin for operator accounts: read-only, the sealed key never loaded or shown."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from assets.models import OperatorAccount

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
