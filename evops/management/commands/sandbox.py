"""`manage.py sandbox`: run the console locally with a ready admin login.

It ensures a superuser `admin` exists with a fresh random password (printed once), then
serves the ASGI application with daphne on 127.0.0.1. Local development only: it refuses
to run with DEBUG off, so it cannot reset a production admin password by accident.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

NOT_IN_PRODUCTION = "sandbox runs only with DEBUG=true (local development)."


class Command(BaseCommand):
    help = "Run the evops console locally (DEBUG only) with a printed admin login."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(NOT_IN_PRODUCTION)
        password = secrets.token_urlsafe(12)
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        port = options["port"]
        self.stdout.write(
            self.style.SUCCESS(
                f"\nevops console: http://127.0.0.1:{port}/admin/\n"
                f"login: admin / {password}\n"
            )
        )
        call_command("runserver", f"127.0.0.1:{port}")
