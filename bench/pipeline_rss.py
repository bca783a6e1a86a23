"""Benchmark 4: resident memory of `run_nats_listener` holding many assets.

Run: .venv/bin/python bench/pipeline_rss.py [--small] [--count N]

Starts the real `manage.py run_nats_listener` process (JSON logs, reconciliation on
start) against a database of N assets and the stand-in (no added latency), samples
its RSS from /proc every 50 ms while it reconciles every asset (the moment it holds
them all), and prints the peak (VmHWM), the RSS after reconciliation, and the RSS of
the same process idle before (no assets). Goal: under 200 MB with 10,000 assets.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_common import (
    ENV,
    ROLE,
    ROOT,
    Stopwatch,
    mine,
    setup_django,
    stand_in_process,
)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _listener(env: dict[str, str], name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_nats_listener", "--name", name],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _until_reconciled(process: subprocess.Popen[str]) -> tuple[float, dict[str, int]]:
    """Read JSON log lines until "reconciliation done"; sample RSS meanwhile."""
    import selectors

    clock = Stopwatch()
    peak_rss = 0
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    result: dict[str, int] = {}
    while clock() < 900:
        peak_rss = max(peak_rss, _status_kb(process.pid, "VmRSS"))
        if selector.select(timeout=0.05):
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("the listener exited")
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("message") == "reconciliation done":
                    result = {k: entry[k] for k in ("assets", "errors")}
                    break
    result["sampled_peak_kb"] = peak_rss
    return clock(), result


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    return process.returncode


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="1,000 assets")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args(argv)
    count = args.count or (1000 if args.small else 10000)

    from evops.protocol.dids import DID
    from evops.protocol.keys import LocalKeySigner
    from evops.sandbox.peers import Anvil, NatsServer

    issuer = LocalKeySigner.generate()
    issuer_did = DID.for_address(issuer.address).canonical
    with Anvil() as anvil, NatsServer() as nats_server:
        registry = anvil.deploy_registry()
        mine(anvil.rpc_url)
        with stand_in_process(
            anvil.rpc_url, nats_url=nats_server.url, issuer_did=issuer_did, latency=0
        ) as stand_in:
            settings_env = {
                "CACHE_SERVER_URL": stand_in.url,
                "CHAIN_RPC_URL": anvil.rpc_url,
                "DID_REGISTRY_ADDRESS": str(registry),
                "NATS_URL": nats_server.url,
                "NATS_PREQUALIFICATION_SUBJECT": "*.prequalification.exchange",
                "NATS_CLAIM_EXCHANGE_SUBJECTS": f"*.claim-exchange.*.{ENV}",
                "PREQUALIFICATION_ROLE": ROLE,
            }
            database_url = setup_django(**settings_env)
            from assets.services import asset_generate

            env = {
                **os.environ,
                **settings_env,
                "DATABASE_URL": database_url,
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
            }
            empty = _listener(env, "bench-empty")
            _until_reconciled(empty)
            time.sleep(1.0)
            idle_rss = _status_kb(empty.pid, "VmRSS")
            _stop(empty)

            asset_generate(count=count)
            from django.db import connections

            connections.close_all()
            process = _listener(env, "bench-rss")
            elapsed, result = _until_reconciled(process)
            hwm = _status_kb(process.pid, "VmHWM")
            time.sleep(1.0)
            after = _status_kb(process.pid, "VmRSS")
            code = _stop(process)
    mb = 1024
    print(
        f"listener memory: run_nats_listener with {count} assets "
        f"(reconciled {result.get('assets')} in {elapsed:.1f} s, errors "
        f"{result.get('errors')}; exit {code})",
        flush=True,
    )
    print(f"  idle, no assets:             RSS {idle_rss / mb:6.1f} MB")
    print(f"  peak while reconciling all:  RSS {hwm / mb:6.1f} MB (VmHWM)")
    print(f"  after reconciliation:        RSS {after / mb:6.1f} MB")
    scaled = idle_rss + (hwm - idle_rss) * 10000 / count
    verdict = "met" if scaled < 200 * mb else "NOT met"
    print(
        f"  peak scaled linearly to 10,000 assets: {scaled / mb:.1f} MB "
        f"(goal < 200 MB: {verdict}; rough below a few thousand assets, where "
        "allocator noise dominates the difference)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
