"""Admin for assets. Key material, plaintext or ciphertext, is never rendered.

`AssetKey` is not registered, and the asset form shows only which master key sealed
the asset's key (a read-only line), never the nonce or ciphertext. Address and DID are
read-only after creation: they are derived from the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.http import HttpRequest

from assets.models import Asset, AssetKey

if TYPE_CHECKING:
    _AssetModelAdmin = admin.ModelAdmin[Asset]
else:
    _AssetModelAdmin = admin.ModelAdmin


@admin.register(Asset)
class AssetAdmin(_AssetModelAdmin):
    list_display = ("did", "address", "kind", "external_id", "label", "created_at")
    list_filter = ("kind", "chain", "active")
    search_fields = ("did", "address", "external_id", "label")
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

    @admin.display(description="key")
    def key_custody(self, obj: Asset) -> str:
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
