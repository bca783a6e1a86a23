"""`manage.py listener_health [--max-age S]`: exit 0 when a listener is healthy.

For process supervisors and readiness probes: healthy means the named listener (or,
without `--name`, every listener seen in the last hour) wrote a heartbeat within
`--max-age` seconds, is connected to NATS, its signer backend answers (a PKCS#11
token that is unplugged or locked makes it unhealthy), and it reports no problem of
its own (a dead NATS read loop, received messages dropped before they were stored).
Exit status 1 otherwise, with the reason on stderr.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from claims import selectors
from claims.models import ConnectionState, ListenerHeartbeat


class Command(BaseCommand):
    help = "Exit 0 if the NATS listener is alive and connected, 1 otherwise."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--name",
            default="",
            help="the listener to check (its --name); default: any listener",
        )
        parser.add_argument(
            "--max-age",
            type=float,
            default=30.0,
            help="seconds since the last heartbeat after which it counts as dead "
            "(default: 30)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        beats = [
            beat
            for beat in selectors.listener_heartbeats()
            if (options["name"] and beat.name == options["name"])
            or (not options["name"] and now - beat.last_heartbeat < timedelta(hours=1))
        ]
        problems = [
            problem
            for beat in beats
            if (problem := _problem(beat, now, options["max_age"]))
        ]
        if not beats:
            problems.append("no listener heartbeat found")
        backlog, oldest = selectors.inbox_backlog(now)
        for beat in beats:
            age = (now - beat.last_heartbeat).total_seconds()
            self.stdout.write(
                f"{beat.name}: {beat.state}, heartbeat {age:.0f}s ago, pid {beat.pid}"
            )
        self.stdout.write(f"inbox backlog: {backlog} (oldest {oldest:.0f}s)")
        if problems:
            for problem in problems:
                self.stderr.write(problem)
            raise SystemExit(1)


def _problem(beat: ListenerHeartbeat, now: Any, max_age: float) -> str:
    age = (now - beat.last_heartbeat).total_seconds()
    if age > max_age:
        return f"{beat.name}: last heartbeat {age:.0f}s ago"
    if beat.state != ConnectionState.CONNECTED:
        return f"{beat.name}: {beat.state}"
    reported = beat.reported_problems()
    if reported:
        return f"{beat.name}: " + "; ".join(reported)
    return ""
