from __future__ import annotations

from django.apps import AppConfig


class AssetsConfig(AppConfig):
    name = "assets"
    verbose_name = "Assets"

    def ready(self) -> None:
        from django.core import checks

        from assets.checks import (
            check_assets_chain,
            check_master_keys_configured,
            check_pkcs11_configured,
            check_relay_operator,
        )

        checks.register(check_relay_operator)
        checks.register(check_assets_chain)
        checks.register(check_pkcs11_configured)
        checks.register(check_master_keys_configured, checks.Tags.security)
