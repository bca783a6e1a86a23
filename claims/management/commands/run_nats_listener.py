"""`manage.py run_nats_listener`: the pipeline's long-running process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from claims.integrations import integrations_from_settings
from claims.listener import Listener
from claims.listener_config import ListenerConfig
from evops.startup import LISTENER_REFUSED, listener_problems

#: The queue group `--processes` uses when none is configured (core NATS).
DEFAULT_GROUP = "evops-listeners"
ERR_PROCESSES = "--processes must be at least 1"
ERR_CHILD = "listener processes exited with {codes}"


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
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            help="run N listener processes (one per core) sharing the messages: "
            "core NATS in one queue group (--queue-group, NATS_QUEUE_GROUP, or "
            f"{DEFAULT_GROUP!r}), JetStream through the one durable consumer. Only "
            "the first reconciles and runs the lifecycle sweep; SIGTERM/SIGINT "
            "stop them all cleanly",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # The rules `check` only warns about (so migrate is never blocked) stop the
        # listener: each would make it publish wrongly or not at all.
        problems = listener_problems()
        if problems:
            raise CommandError(LISTENER_REFUSED.format(problems="; ".join(problems)))
        if options["processes"] < 1:
            raise CommandError(ERR_PROCESSES)
        if options["processes"] > 1:
            self._supervise(options)
            return
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

    def _supervise(self, options: dict[str, Any]) -> None:
        """Run `--processes` listeners as child processes and stop them together.

        The GIL keeps one listener on one core; N processes use N. They share the
        work as any listeners of one deployment do: core NATS hands each message
        to one member of the queue group, JetStream's durable pull consumer to one
        fetcher, and the database leases (`SKIP LOCKED`) keep two processes off one
        message or record. A child that dies stops the others (exit 1): the
        supervisor above (systemd, Kubernetes) restarts the whole set.
        """
        count = options["processes"]
        base = options["name"] or socket.gethostname()
        stream = (
            options["jetstream"]
            if options["jetstream"] is not None
            else settings.NATS_JETSTREAM_STREAM
        )
        group = options["queue_group"] or settings.NATS_QUEUE_GROUP or DEFAULT_GROUP
        children: list[subprocess.Popen[bytes]] = []
        for index in range(count):
            argv = [sys.executable, sys.argv[0], "run_nats_listener"]
            argv += ["--name", f"{base}-{index + 1}"]
            if not stream:
                argv += ["--queue-group", group]
            for option in ("jetstream", "durable", "concurrency"):
                if options[option] is not None:
                    argv += [f"--{option}", str(options[option])]
            env = dict(os.environ)
            if options["no_reconcile"] or index > 0:
                argv.append("--no-reconcile")
            if index > 0:
                # One reconciler and one lifecycle sweeper for the whole set.
                env["LIFECYCLE_INTERVAL"] = "0"
                if settings.METRICS_PORT:
                    env["METRICS_PORT"] = str(settings.METRICS_PORT + index)
            # Our own interpreter and manage.py, options we parsed: no shell.
            children.append(subprocess.Popen(argv, env=env))  # noqa: S603
        self.stdout.write(
            f"started {count} listener processes "
            + ", ".join(str(child.pid) for child in children)
            + (f" on JetStream {stream}" if stream else f" in queue group {group}")
        )
        stopping = False

        def stop(signum: int, _frame: Any) -> None:
            nonlocal stopping
            stopping = True
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        previous = {
            sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            while any(child.poll() is None for child in children):
                failed = [c for c in children if c.poll() not in (None, 0)]
                if failed and not stopping:
                    self.stderr.write(
                        f"listener process {failed[0].pid} exited with "
                        f"{failed[0].returncode}: stopping the others"
                    )
                    stop(signal.SIGTERM, None)
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        codes = [child.returncode for child in children]
        if any(codes) and not (stopping and all(c == 0 for c in codes)):
            raise CommandError(ERR_CHILD.format(codes=codes))
        self.stdout.write("listeners stopped")

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
