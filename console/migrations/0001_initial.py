from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="ConsoleAction",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
            ],
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": [
                    (
                        "retry_publication",
                        "Can retry the publication of failed claims",
                    ),
                    ("reconcile_assets", "Can reconcile assets with the chain"),
                    (
                        "request_prequalification",
                        "Can request prequalification for assets",
                    ),
                    ("export_csv", "Can export admin lists as CSV"),
                ],
            },
        ),
    ]
