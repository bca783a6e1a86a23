"""Shared parts of the bench/chaos_*.py scripts (not a script itself).

The chaos scripts drive the real `manage.py run_nats_listener` processes from
outside, against their own peers (anvil with the registry, a private nats-server,
the cache-server stand-in in its own process, the stand-in's store for tokens) and
a PostgreSQL database of their own (`pipeline_common.setup_django`). They check
invariants on what the peers saw, not on what evops says about itself:

- the chain: `DIDAttributeChanged` logs of the registry, counted per identity (one
  credential per asset, so more than one log for an identity is a second write);
- the cache server: its `request-credential` notices (one per claim request it
  accepted), counted per asset through the claim ids evops recorded;
- the database: claims left in `publishing`, failed claims, failed messages.

Every listener process started here is killed when the script exits (atexit, and
SIGTERM exits through SystemExit; see `pipeline_common`).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline_common import ENV, ROLE, ROOT

_LOGS = Path(tempfile.mkdtemp(prefix="evops-chaos-"))
_RUNNING: list[ListenerProcess] = []


def time_limit(seconds: float) -> None:
    """Exit (through SystemExit, so clean-up runs) after `seconds` at the latest."""

    def expired(*_: object) -> None:
        print(f"TIME LIMIT of {seconds:.0f} s reached: giving up", flush=True)
        sys.exit(3)

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(seconds))


def listener_env(
    *, stand_in_url: str, rpc_url: str, registry: str, nats_url: str, **extra: str
) -> dict[str, str]:
    """Settings shared by the script's own Django and the listener processes."""
    return {
        "CACHE_SERVER_URL": stand_in_url,
        "CHAIN_RPC_URL": rpc_url,
        "DID_REGISTRY_ADDRESS": registry,
        "CHAIN_MAX_FEE_GWEI": "100",
        "CREDENTIAL_STORE": "cache-server",
        "NATS_URL": nats_url,
        "NATS_PREQUALIFICATION_SUBJECT": "*.prequalification.exchange",
        "NATS_CLAIM_EXCHANGE_SUBJECTS": f"*.claim-exchange.*.{ENV}",
        "PREQUALIFICATION_ROLE": ROLE,
        "HEARTBEAT_INTERVAL": "2",
        **extra,
    }


class ListenerProcess:
    """One `manage.py run_nats_listener` process, its output in a log file."""

    def __init__(self, env: dict[str, str], name: str, *args: str) -> None:
        self.name = name
        self.log_path = _LOGS / f"{name}-{len(_RUNNING)}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "run_nats_listener", "--name", name, *args],
            cwd=ROOT,
            env={**os.environ, **env, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        _RUNNING.append(self)

    def log_lines(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries

    async def listening(self, within: float = 90.0) -> None:
        """Wait for its "listening" log line (subscribed, or bound to the stream)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            if any(e.get("message") == "listening" for e in self.log_lines()):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start listening; {self.log_path}")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode

    def errors(self) -> list[str]:
        return [
            str(e.get("message"))
            for e in self.log_lines()
            if e.get("level") in ("ERROR", "CRITICAL")
        ]


@atexit.register
def kill_listeners() -> None:
    """Kill every listener process still running (exit, time limit, SIGTERM)."""
    for listener in _RUNNING:
        if listener.process.poll() is None:
            listener.process.kill()
            with contextlib.suppress(Exception):
                listener.process.wait(timeout=10)


def raw_publish(url: str, items: Iterable[tuple[bytes, bytes]]) -> None:
    """Publish with the bare protocol (nats-py refuses non-UTF-8 subjects)."""
    address = urlparse(url)
    assert address.port is not None
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.recv(4096)  # INFO
        data = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
        for subject, payload in items:
            data += b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload)
        sock.sendall(data + b"PING\r\n")
        reply = b""
        while b"PONG" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"NATS closed the connection: {reply!r}")
            reply += chunk


def chain_writes(rpc_url: str, registry: str) -> collections.Counter[str]:
    """`DIDAttributeChanged` logs of the registry, counted per identity (lowercase)."""
    from evops.protocol.erc1056 import REGISTRY_EVENTS
    from evops.sandbox.peers import chain_web3

    web3 = chain_web3(rpc_url)
    logs = web3.eth.get_logs(
        {
            "address": web3.to_checksum_address(registry),
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": ["0x" + REGISTRY_EVENTS["DIDAttributeChanged"].hex()],
        }
    )
    return collections.Counter(
        "0x" + bytes(entry["topics"][1])[-20:].hex() for entry in logs
    )


class HubWatcher:
    """Counts the cache server's `request-credential` notices: its claim requests."""

    def __init__(self) -> None:
        self.claim_ids: collections.Counter[str] = collections.Counter()
        self._client: Any = None

    async def start(self, nats_url: str) -> None:
        import nats

        self._client = await nats.connect(nats_url)

        async def seen(msg: Any) -> None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.claim_ids[json.loads(msg.data)["claimId"]] += 1

        await self._client.subscribe(
            f"request-credential.claim-exchange.*.{ENV}",
            cb=seen,
            pending_msgs_limit=10**6,
        )
        await self._client.flush()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.drain()


async def claim_requests_per_asset(watcher: HubWatcher) -> dict[str, Any]:
    """Hub-side claim requests per asset (through the claim ids evops recorded)."""
    from claims.models import ClaimRecord

    asset_of = {
        claim_id: asset_id
        async for claim_id, asset_id in ClaimRecord.objects.values_list(
            "claim_id", "asset_id"
        )
    }
    per_asset: collections.Counter[int] = collections.Counter()
    unknown = 0
    for claim_id, times in watcher.claim_ids.items():
        if claim_id in asset_of:
            per_asset[asset_of[claim_id]] += times
        else:
            unknown += times
    return {"per_asset": per_asset, "unknown": unknown}


async def prepare_requested(assets: list[Any], concurrency: int = 20) -> list[Any]:
    """File a claim request for each asset in-process (before any listener runs)."""
    from claims import pipeline
    from claims.integrations import integrations_from_settings
    from claims.models import LISTENER, ClaimRecord

    integrations = integrations_from_settings()
    semaphore = asyncio.Semaphore(concurrency)

    async def request(asset: Any) -> None:
        async with semaphore:
            await pipeline.claim_request_prequalification(
                asset=asset, integrations=integrations, actor=LISTENER
            )

    await asyncio.gather(*(request(asset) for asset in assets))
    await integrations.aclose()
    ids = [a.pk for a in assets]
    return [
        r
        async for r in ClaimRecord.objects.select_related("asset").filter(
            asset_id__in=ids
        )
    ]


def tso_job(
    records: list[Any], *, issuer_key: str, issuer_did: str, url: str, rpc_url: str
) -> dict[str, Any]:
    """The TSO process's input (`pipeline_publish._TSO`): one issue per record."""
    from evops.protocol.jwt import issued_token
    from evops.protocol.keys import LocalKeySigner

    issuer = LocalKeySigner(issuer_key)
    items = [
        {
            "claim_id": r.claim_id,
            "did": r.asset.did,
            "token": issued_token(
                issuer,
                issuer_did=issuer_did,
                subject=r.asset.did,
                claim_data={"claimType": ROLE, "claimTypeVersion": 1},
                exp=int(time.time()) + 3600,
            ),
        }
        for r in records
    ]
    return {
        "issuer_key": issuer_key,
        "issuer_did": issuer_did,
        "url": url,
        "rpc_url": rpc_url,
        "concurrency": 20,
        "items": items,
    }


async def start_tso(job: dict[str, Any]) -> asyncio.subprocess.Process:
    from pipeline_publish import _TSO

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _TSO,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(job).encode())
    await process.stdin.drain()
    process.stdin.close()
    return process


async def tso_results(process: asyncio.subprocess.Process) -> dict[str, int]:
    """Wait for the TSO process; the HTTP status of each claim's issue call."""
    assert process.stdout is not None
    out = await process.stdout.read()
    await process.wait()
    statuses = {}
    for line in out.decode().splitlines():
        claim_id, status, _ = json.loads(line)
        statuses[claim_id] = status
    return statuses


async def database_figures() -> dict[str, int]:
    """What the database holds now: claims by status, messages by outcome."""
    from claims.models import ClaimRecord, InboundMessage

    figures: dict[str, int] = {}
    async for status, in_status in _grouped(ClaimRecord.objects, "status"):
        figures[f"claims {status}"] = in_status
    async for outcome, in_outcome in _grouped(InboundMessage.objects, "outcome"):
        figures[f"messages {outcome}"] = in_outcome
    return figures


async def _grouped(manager: Any, field: str) -> Any:
    from django.db.models import Count

    async for row in manager.values(field).annotate(n=Count("id")).order_by(field):
        yield row[field], row["n"]


def fund_all(rpc_url: str, addresses: list[str]) -> None:
    from evops.sandbox.peers import fund

    for address in addresses:
        fund(rpc_url, address, 10**19)
