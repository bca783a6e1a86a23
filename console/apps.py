from __future__ import annotations

from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The staff console: admin site and admins, services, dashboard, live updates."""

    name = "console"
    verbose_name = "Operator console"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from claims import signals
        from console import groups, live, unfold_patches

        unfold_patches.install()

        # Groups after every migrate (and test-database flush), once all apps'
        # permissions exist: console is the last app, so its post_migrate is last.
        post_migrate.connect(
            groups.ensure_groups_after_migrate,
            sender=self,
            dispatch_uid="console-groups",
        )
        signals.claim_changed.connect(
            live.on_claim_changed, dispatch_uid="console-live-claim-changed"
        )
