"""Shared set-up for the bench/pipeline_*.py benchmarks (not a benchmark itself).

Each benchmark starts its own peers (evops.sandbox.peers), runs the cache-server
stand-in in its own process (so it does not share the benchmark's GIL), and uses a
temporary PostgreSQL database `evops_bench_<pid>` created and dropped here, or a
temporary SQLite file when PostgreSQL is not reachable. Django is configured from
environment variables set before `django.setup()`, exactly as the real process is.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# `timeout` and supervisors send SIGTERM: exit through SystemExit so the peers'
# context managers and the database drop (atexit) still run, leaving no orphans.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

ROLE = "prequalified.roles.tso.apps.elia.iam.ewc"
ENV = "ewf-bench"
PG_ADMIN_URL = os.environ.get(
    "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def temporary_database() -> str:
    """Create `evops_bench_<pid>` (dropped at exit) and return its DATABASE_URL.

    Falls back to a SQLite file in a temporary directory without PostgreSQL.
    """
    name = f"evops_bench_{os.getpid()}"
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}"')
            db.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # no PostgreSQL here: SQLite is enough to run
        print(f"(PostgreSQL not available: {exc}; using SQLite)", flush=True)
        directory = tempfile.mkdtemp(prefix="evops-bench-")
        return f"sqlite:///{directory}/bench.sqlite3"

    def drop() -> None:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        with (
            contextlib.suppress(Exception),
            psycopg.connect(PG_ADMIN_URL, autocommit=True) as db,
        ):
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def setup_django(**env: str) -> str:
    """Set the environment, create the database, `django.setup()` and migrate."""
    database_url = temporary_database()
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evops.settings_test")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.update(env)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return database_url


@dataclass(frozen=True)
class StandIn:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def stand_in_process(
    rpc_url: str,
    *,
    nats_url: str | None,
    issuer_did: str,
    latency: float,
    registry_address: str | None = None,
    seed_endpoint: bool = False,
    blocks_back: int | None = None,
) -> Iterator[StandIn]:
    """The cache-server stand-in in its own process.

    `blocks_back`: how many blocks old a login's block number may be (the server's
    `STRATEGY_NUM_BLOCKS_BACK`; the stand-in's default is the public deployments'
    10, about 50 s of 5 s blocks)."""
    from evops.sandbox.peers import free_port

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "evops.sandbox.cache_server",
        *("--rpc-url", rpc_url, "--port", str(port), "--latency", str(latency)),
        *("--role", f"{ROLE}={issuer_did}", "--env", ENV),
    ]
    if nats_url:
        command += ["--nats-url", nats_url]
    if registry_address:
        command += ["--registry-address", registry_address]
    if seed_endpoint:
        command += ["--seed-endpoint"]
    if blocks_back is not None:
        command += ["--blocks-back", str(blocks_back)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # "... listening on ..."
        yield StandIn(f"http://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


def mine(rpc_url: str, blocks: int = 32) -> None:
    """Login freshness looks a few blocks back: make sure there are some."""
    from web3.types import RPCEndpoint

    from evops.sandbox.peers import chain_web3

    chain_web3(rpc_url).manager.request_blocking(
        RPCEndpoint("anvil_mine"), [hex(blocks)]
    )


class BenchFailure(SystemExit):
    """A bench that cannot give an honest figure stops loud, with a non-zero code."""

    def __init__(self, message: str) -> None:
        print(f"BENCH FAILED: {message}", file=sys.stderr, flush=True)
        super().__init__(2)


def raw_signature_seconds(rounds: int = 5, per_round: int = 2000) -> float:
    """CPU seconds of one raw secp256k1 signature (coincurve, recoverable), now.

    The yardstick every pipeline bench divides its CPU by: a figure in "raw
    signatures" means the same on a fast idle machine and on a slow shared one.
    Measured in CPU time (not wall) and the best of a few rounds, so other
    processes on the machine move it little.
    """
    from coincurve import PrivateKey

    key = PrivateKey()
    digest = os.urandom(32)
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(per_round):
            key.sign_recoverable(digest, hasher=None)
        best = min(best, (time.thread_time() - start) / per_round)
    return best


class Yardstick:
    """The raw signature measured at the start and at the end of a run."""

    def __init__(self) -> None:
        self.samples = [raw_signature_seconds()]

    def close(self) -> None:
        self.samples.append(raw_signature_seconds())

    @property
    def seconds(self) -> float:
        return min(self.samples)

    def ratio(self, cpu_seconds: float) -> float:
        """`cpu_seconds` as a count of raw signatures."""
        return cpu_seconds / self.seconds

    def describe(self) -> str:
        return (
            "raw secp256k1 signature (coincurve, this run): "
            + " / ".join(f"{s * 1e6:.1f} us" for s in self.samples)
            + " CPU (start / end; the smaller is the unit)"
        )


def machine_line() -> str:
    """CPU model, cores, load average and date: what bench/README.md records."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"machine: {model}, {os.cpu_count()} cores, load average {load}; {now}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def describe(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50) * 1000:.0f} ms, "
        f"p99 {percentile(values, 99) * 1000:.0f} ms, "
        f"mean {statistics.fmean(values) * 1000:.0f} ms"
    )


def histogram_sum(histogram: Any) -> float:
    """Sum of all observations of a prometheus Histogram (every label set)."""
    total = 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                total += sample.value
    return total


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy, all cores (Linux /proc/stat):
    with this process's and the stand-in's, what PostgreSQL, NATS and anvil took."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    busy = user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


async def wait_for(predicate: Any, seconds: float, interval: float = 0.02) -> bool:
    """Poll the async `predicate` until it is true or `seconds` pass."""
    import asyncio

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


async def start_listener(listener: Any) -> Any:
    """Start `listener.run()` as a task and return it once it is subscribed."""
    import asyncio

    task = asyncio.create_task(listener.run())

    async def connected() -> bool:
        if task.done():
            task.result()
        return bool(listener.listening.is_set())

    if not await wait_for(connected, 60):
        raise BenchFailure("the listener did not subscribe within 60 s")
    # `listening` is set once the server has the subscriptions (the listener waits
    # for nats-py's flusher and a PING round trip): a burst may be published now.
    return task


async def failures() -> str:
    """What went wrong so far: failed or rejected messages, failed or retried
    records, in one line ("" when nothing did)."""
    from claims.models import ClaimRecord, ClaimStatus, InboundMessage, MessageOutcome

    bad = InboundMessage.objects.filter(
        outcome__in=(MessageOutcome.FAILED, MessageOutcome.REJECTED)
    )
    retried_messages = InboundMessage.objects.filter(
        outcome=MessageOutcome.PENDING, attempts__gt=0
    ).exclude(reason="")
    failed = ClaimRecord.objects.filter(status=ClaimStatus.FAILED)
    retried = ClaimRecord.objects.exclude(last_error="")
    parts = []
    for label, queryset, field in (
        ("message(s) failed or rejected", bad, "reason"),
        ("message(s) deferred after an error", retried_messages, "reason"),
        ("record(s) failed", failed, "last_error"),
        ("record(s) retrying after an error", retried, "last_error"),
    ):
        count = await queryset.acount()
        if count:
            first = await queryset.values_list(field, flat=True).afirst()
            parts.append(f"{count} {label}, first: {str(first)[:300]!r}")
    return "; ".join(parts)


async def wait_done(
    done: Any, seconds: float, what: str, *, interval: float = 0.05
) -> None:
    """Wait for the async `done`; fail loud at the first failure or past `seconds`.

    A bench that waits in silence for a message that failed gives no figure and
    wastes its time limit: every poll also looks for failures.
    """
    import asyncio

    deadline = time.monotonic() + seconds
    checked = 0.0
    while True:
        if await done():
            return
        now = time.monotonic()
        if now - checked >= 1.0:
            checked = now
            problem = await failures()
            if problem:
                raise BenchFailure(f"{what}: {problem}")
        if now > deadline:
            problem = await failures()
            raise BenchFailure(
                f"{what}: not done within {seconds:.0f} s"
                + (f"; {problem}" if problem else "")
            )
        await asyncio.sleep(interval)
