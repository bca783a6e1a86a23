"""A table-less model that carries the console's custom permissions.

The actions are not about one model (reconcile and prequalification act on assets,
retry on claims), and the claims/assets models belong to other apps, so the
permissions live here: `console.retry_publication` and so on. No table is created.
"""

from __future__ import annotations

from django.db import models


class ConsoleAction(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("retry_publication", "Can retry the publication of failed claims"),
            ("reconcile_assets", "Can reconcile assets with the chain"),
            ("request_prequalification", "Can request prequalification for assets"),
            ("export_csv", "Can export admin lists as CSV"),
        ]

    def __str__(self) -> str:
        return "console action"
