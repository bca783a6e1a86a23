"""`manage.py run_nats_listener`: the pipeline's long-running process."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from claims.integrations import integrations_from_settings
from claims.listener import Listener, ListenerConfig
from evops.startup import LISTENER_REFUSED, listener_problems


class Command(BaseCommand):
    help = "Listen on NATS for prequalification and claim messages and process them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--name",
            default="",
            help="listener name shown in the console and used by listener_health "
            "(default: the host name)",
        )
        parser.add_argument(
            "--queue-group",
            default=None,
            help="NATS queue group: listeners in one group share the messages "
            "(default: NATS_QUEUE_GROUP)",
        )
        parser.add_argument(
            "--jetstream",
            default=None,
            metavar="STREAM",
            help="JetStream mode on this stream: a durable consumer, acked after the "
            "message is stored (default: NATS_JETSTREAM_STREAM; empty: core NATS)",
        )
        parser.add_argument(
            "--durable",
            default=None,
            help="JetStream durable consumer name (default: NATS_JETSTREAM_DURABLE)",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="messages and claims in hand at once (default: WORKER_CONCURRENCY)",
        )
        parser.add_argument(
            "--no-reconcile",
            action="store_true",
            help="skip the reconciliation at start and the periodic one",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # The rules `check` only warns about (so migrate is never blocked) stop the
        # listener: each would make it publish wrongly or not at all.
        problems = listener_problems()
        if problems:
            raise CommandError(LISTENER_REFUSED.format(problems="; ".join(problems)))
        config = ListenerConfig.from_settings(
            name=options["name"],
            queue_group=options["queue_group"],
            stream=options["jetstream"],
            durable=options["durable"],
            concurrency=options["concurrency"],
            reconcile_on_start=not options["no_reconcile"],
        )
        if options["no_reconcile"]:
            config.reconcile_interval = 0
        if settings.METRICS_PORT:
            from prometheus_client import start_http_server

            start_http_server(settings.METRICS_PORT, addr="127.0.0.1")
        try:
            asyncio.run(self._run(config))
        except ImproperlyConfigured as exc:
            # e.g. relay mode without an operator key: one readable line, no traceback.
            raise CommandError(str(exc)) from exc
        self.stdout.write("listener stopped")

    async def _run(self, config: ListenerConfig) -> None:
        integrations = integrations_from_settings()
        listener = Listener(config, integrations)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, listener.stop.set)
        try:
            await listener.run()
        finally:
            await integrations.aclose()
