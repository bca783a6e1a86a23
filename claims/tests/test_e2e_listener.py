"""The listener as deployed, end to end on the real local peers.

Unlike test_end_to_end.py (which hands the pipeline a hand-built `Integrations`), these
tests build everything from settings: `integrations_from_settings()` with assets whose
keys are sealed in the database and decrypted by the real signer backend, and in the
first tests `manage.py run_nats_listener` itself as a subprocess, stopped by signals.
Every key involved is registered with the assets' `LEAK_GUARD`, and each test scans
what it produced (logs, captured output, the subprocess's output) for them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection

from assets.models import Asset
from assets.services import asset_create_from_key
from assets.tests.conftest import LEAK_GUARD, make_key
from claims.integrations import Integrations, integrations_from_settings
from claims.listener import Listener
from claims.listener_config import ListenerConfig
from claims.models import (
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    ConnectionState,
    InboundMessage,
    ListenerHeartbeat,
    MessageOutcome,
)
from claims.tests.test_end_to_end import ROLE, _issue, _token, _until
from evops.integrations.nats import NatsOptions
from evops.logs import JsonFormatter
from evops.protocol.keys import LocalKeySigner
from evops.sandbox import peers
from evops.sandbox.cache_server import CacheServerStandIn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.peers]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def issuer() -> LocalKeySigner:
    """The TSO's key, known to the leak guard (it must never show up either)."""
    return LocalKeySigner(make_key().hex)


@pytest.fixture
def subjects(env_name: str) -> list[str]:
    return [f"{env_name}.prequalification.exchange", f"*.claim-exchange.*.{env_name}"]


@pytest.fixture
def real_settings(
    settings: Any,
    anvil: peers.Anvil,
    registry_address: str,
    ipfs_node: peers.IpfsNode,
    stand_in: CacheServerStandIn,
    nats_server: peers.NatsServer,
    subjects: list[str],
) -> Any:
    """Settings pointing every integration at the local peers (asset chain mode)."""
    settings.CACHE_SERVER_URL = stand_in.url
    settings.CHAIN_RPC_URL = anvil.rpc_url
    settings.CHAIN_ID = 73799
    settings.DID_REGISTRY_ADDRESS = registry_address
    settings.CHAIN_WRITE_MODE = "asset"
    settings.CHAIN_MAX_FEE_GWEI = Decimal(100)
    settings.CREDENTIAL_STORE = "ipfs"
    settings.IPFS_API_URL = ipfs_node.api_url
    settings.PREQUALIFICATION_ROLE = ROLE
    settings.ALLOWED_CLAIM_TYPES = [ROLE]
    settings.NATS_URL = nats_server.url
    settings.NATS_PREQUALIFICATION_SUBJECT = subjects[0]
    settings.NATS_CLAIM_EXCHANGE_SUBJECTS = subjects[1:]
    return settings


@pytest.fixture
def sealed_keys() -> dict[str, str]:
    """Address -> key hex of the assets `sealed_asset` made (guard self-checks)."""
    return {}


@pytest.fixture
def sealed_asset(
    anvil: peers.Anvil, sealed_keys: dict[str, str]
) -> Callable[[], Asset]:
    """An asset whose (leak-guarded) key is sealed in the database, funded on anvil."""

    def make() -> Asset:
        key = make_key()
        asset = asset_create_from_key(private_key=key.hex)
        sealed_keys[asset.address] = key.hex
        peers.fund(anvil.rpc_url, asset.address, 10**19)
        return asset

    return make


def _listener_config(nats_url: str, subjects: list[str], **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "nats": NatsOptions(url=nats_url),
        "subjects": subjects,
        "name": f"e2e-{uuid.uuid4().hex[:6]}",
        "reconcile_on_start": False,
        "reconcile_interval": 0,
        "concurrency": 8,
        "heartbeat_interval": 0.5,
        "idle_poll": 0.2,
        "drain_timeout": 10.0,
    }
    values.update(overrides)
    return ListenerConfig(**values)


async def _publish(url: str, messages: list[tuple[str, dict[str, Any]]]) -> None:
    client = await nats.connect(url)
    for subject, payload in messages:
        await client.publish(subject, json.dumps(payload).encode())
    await client.flush()
    await client.close()


def _request_subject(subjects: list[str]) -> str:
    return subjects[0]


async def _written_once(record: ClaimRecord, integrations: Integrations) -> None:
    """One `written` event and exactly one service entry for the claim on chain."""
    assert await record.events.filter(kind="written").acount() == 1
    document = await integrations.chain.resolve_document(record.asset.did)
    services = [s for s in document.get("service") or [] if isinstance(s, dict)]
    matching = [
        s
        for s in services
        if str(s.get("hash", "")).lower().removeprefix("0x") == record.token_sha256
    ]
    assert len(matching) == 1, services
    assert matching[0]["serviceEndpoint"] == record.cid


# --- (a) run_nats_listener as a real process --------------------------------------


class _ListenerProcess:
    """`manage.py run_nats_listener` in a subprocess against the test database."""

    def __init__(self, env: dict[str, str], name: str, *extra: str) -> None:
        self.name = name
        self.output = ""
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "run_nats_listener",
                *("--name", name, "--no-reconcile", *extra),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_connected(self, timeout: float = 60.0, name: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            beat = ListenerHeartbeat.objects.filter(name=name or self.name).first()
            # Subscribed, not only connected: a message published in between
            # would be lost (core NATS).
            if (
                beat is not None
                and beat.state == ConnectionState.CONNECTED
                and beat.details.get("listening")
            ):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"listener exited early:\n{self.finish()}")
            time.sleep(0.1)
        raise AssertionError("listener never connected")

    def stop(self, sig: int, timeout: float = 60.0) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.finish()
        return code

    def finish(self) -> str:
        if self.proc.stdout is None or self.proc.stdout.closed:
            return self.output
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate()
        self.output += out or ""
        return self.output


@pytest.fixture
def listener_env(
    real_settings: Any, subjects: list[str]
) -> Callable[..., dict[str, str]]:
    """The environment `run_nats_listener` gets: the same peers and test database."""
    db = connection.settings_dict

    def make(**extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "evops.settings_test",
            "DATABASE_URL": (
                f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
            ),
            "CACHE_SERVER_URL": real_settings.CACHE_SERVER_URL,
            "CHAIN_RPC_URL": real_settings.CHAIN_RPC_URL,
            "CHAIN_ID": "73799",
            "DID_REGISTRY_ADDRESS": real_settings.DID_REGISTRY_ADDRESS,
            "CHAIN_WRITE_MODE": "asset",
            "CHAIN_MAX_FEE_GWEI": "100",
            "CREDENTIAL_STORE": "ipfs",
            "IPFS_API_URL": real_settings.IPFS_API_URL,
            "PREQUALIFICATION_ROLE": ROLE,
            "NATS_URL": real_settings.NATS_URL,
            "NATS_PREQUALIFICATION_SUBJECT": subjects[0],
            "NATS_CLAIM_EXCHANGE_SUBJECTS": ",".join(subjects[1:]),
            "HEARTBEAT_INTERVAL": "0.5",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        env.update(extra)
        return env

    return make


def _json_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def _wait_leased(pk: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if InboundMessage.objects.filter(pk=pk, attempts__gte=1).exists():
            return
        time.sleep(0.05)
    raise AssertionError("the message was never leased")


def _wait_message(subject: str, timeout: float = 30.0) -> InboundMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = InboundMessage.objects.filter(subject=subject).first()
        if message is not None:
            return message
        time.sleep(0.05)
    raise AssertionError("the message was never recorded")


def test_processes_share_a_burst_and_stop_together_on_sigterm(
    listener_env, sealed_asset, stand_in, nats_server, subjects
):
    assets = [sealed_asset() for _ in range(6)]
    base = f"multi-{uuid.uuid4().hex[:6]}"
    process = _ListenerProcess(listener_env(), base, "--processes", "2")
    try:
        for index in (1, 2):
            process.wait_connected(name=f"{base}-{index}")
        # Both subscribed in one queue group: each request is handled once.
        asyncio.run(
            _publish(nats_server.url, [(subjects[0], {"did": a.did}) for a in assets])
        )
        deadline = time.monotonic() + 60
        while ClaimRecord.objects.count() < len(assets):
            assert time.monotonic() < deadline, process.finish()
            time.sleep(0.1)
        code = process.stop(signal.SIGTERM)
    finally:
        output = process.finish()
    assert code == 0, output
    assert "started 2 listener processes" in output
    assert "in queue group evops-listeners" in output
    assert "listeners stopped" in output
    assert ClaimRecord.objects.count() == len(assets)
    assert InboundMessage.objects.filter(subject=subjects[0]).count() == len(assets)
    assert sorted(
        ListenerHeartbeat.objects.filter(name__startswith=base).values_list(
            "name", "state"
        )
    ) == [
        (f"{base}-1", ConnectionState.STOPPED),
        (f"{base}-2", ConnectionState.STOPPED),
    ]


def test_sigterm_finishes_the_message_in_flight_and_exits_0(
    listener_env, sealed_asset, stand_in, nats_server, subjects
):
    asset = sealed_asset()
    port = peers.free_port()
    process = _ListenerProcess(
        listener_env(METRICS_PORT=str(port)), f"proc-{uuid.uuid4().hex[:6]}"
    )
    try:
        process.wait_connected()
        # The supervisor's view while it runs: healthy, and metrics served.
        out = io.StringIO()
        call_command("listener_health", "--name", process.name, stdout=out)
        assert f"{process.name}: connected" in out.getvalue()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            scraped = response.read().decode()
        assert "evops_nats_connected 1.0" in scraped
        assert "evops_inbox_backlog" in scraped
        assert "evops_nats_messages_received_total" in scraped

        # Each cache-server call now takes 1 s: the request (login, role, filing)
        # is still in flight when SIGTERM arrives, and must be finished.
        stand_in.set_faults(latency=1.0)
        asyncio.run(_publish(nats_server.url, [(subjects[0], {"did": asset.did})]))
        message = _wait_message(subjects[0])
        _wait_leased(message.pk)
        code = process.stop(signal.SIGTERM)
    finally:
        stand_in.set_faults(latency=0.0)
        output = process.finish()
    assert code == 0, output
    assert "listener stopped" in output
    message.refresh_from_db()
    assert message.outcome == MessageOutcome.PROCESSED, (message.reason, output)
    record = ClaimRecord.objects.get(asset=asset)
    assert record.status == ClaimStatus.REQUESTED
    assert stand_in.claims[record.claim_id]["requester"] == asset.did
    beat = ListenerHeartbeat.objects.get(name=process.name)
    assert beat.state == ConnectionState.STOPPED
    with pytest.raises(SystemExit):
        call_command("listener_health", "--name", process.name, stdout=io.StringIO())

    # LOG_FORMAT=json: one object per line, with the flow's context on its records.
    entries = _json_lines(output)
    filed = [e for e in entries if e["message"] == "claim request filed"]
    assert filed and filed[0]["asset_did"] == asset.did
    assert filed[0]["claim_id"] == record.claim_id
    handled = [e for e in entries if e["message"].startswith("message processed")]
    assert handled and handled[0]["subject"] == subjects[0]
    LEAK_GUARD.assert_clean(output, "run_nats_listener output")


def test_sigint_hands_back_what_does_not_finish_and_a_restart_does_it(
    listener_env, sealed_asset, stand_in, nats_server, subjects
):
    asset = sealed_asset()
    env = listener_env(DRAIN_TIMEOUT="0.5")
    first = _ListenerProcess(env, f"proc-{uuid.uuid4().hex[:6]}")
    try:
        first.wait_connected()
        stand_in.set_faults(latency=5.0)  # far longer than the drain timeout
        asyncio.run(_publish(nats_server.url, [(subjects[0], {"did": asset.did})]))
        message = _wait_message(subjects[0])
        _wait_leased(message.pk)
        code = first.stop(signal.SIGINT)
    finally:
        stand_in.set_faults(latency=0.0)
        output = first.finish()
    assert code == 0, output
    message.refresh_from_db()
    # Handed back: still pending, due now, the interrupted attempt not counted.
    assert message.outcome == MessageOutcome.PENDING
    assert message.attempts == 0
    assert not ClaimRecord.objects.filter(asset=asset).exists()

    second = _ListenerProcess(env, f"proc-{uuid.uuid4().hex[:6]}")
    try:
        second.wait_connected()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message.refresh_from_db()
            if message.outcome != MessageOutcome.PENDING:
                break
            time.sleep(0.1)
        code = second.stop(signal.SIGTERM)
    finally:
        output += second.finish()
    assert code == 0, output
    assert message.outcome == MessageOutcome.PROCESSED, (message.reason, output)
    record = ClaimRecord.objects.get(asset=asset)
    assert record.status == ClaimStatus.REQUESTED
    requests = [c for c in stand_in.claims.values() if c["requester"] == asset.did]
    assert len(requests) == 1
    LEAK_GUARD.assert_clean(output, "run_nats_listener output")


# --- (b), (c): in-process listeners on the real integrations ----------------------


async def _start(listener: Listener) -> asyncio.Task[None]:
    task = asyncio.create_task(listener.run())

    async def listening() -> bool:
        if task.done():
            task.result()
        return listener.listening.is_set()

    await _until(listening, "listener subscribed")
    return task


async def _stop(listener: Listener, task: asyncio.Task[None]) -> None:
    listener.stop.set()
    await asyncio.wait_for(task, timeout=60)
    assert listener.state == ConnectionState.STOPPED


async def _records(assets: list[Asset]) -> list[ClaimRecord]:
    return [
        r
        async for r in ClaimRecord.objects.select_related("asset")
        .filter(asset__in=assets)
        .order_by("asset_id")
    ]


@pytest.mark.asyncio
async def test_jetstream_listener_down_while_credentials_are_issued(
    real_settings,
    sealed_asset,
    stand_in,
    issuer,
    anvil,
    nats_server,
    subjects,
    jetstream_stream,
):
    stream = jetstream_stream
    durable = f"d{uuid.uuid4().hex[:8]}"
    assets = [await sync_to_async(sealed_asset)() for _ in range(3)]
    integrations = integrations_from_settings()
    first = Listener(
        _listener_config(nats_server.url, subjects, stream=stream, durable=durable),
        integrations,
    )
    task = await _start(first)
    await _publish(nats_server.url, [(subjects[0], {"did": a.did}) for a in assets])

    async def requested() -> bool:
        return await ClaimRecord.objects.filter(
            status=ClaimStatus.REQUESTED
        ).acount() == len(assets)

    await _until(requested, "claim requests filed")
    await _stop(first, task)
    await integrations.aclose()

    # Nobody listens: the TSO issues every credential, the stand-in announces them.
    records = await _records(assets)
    for record in records:
        status = await _issue(
            stand_in, issuer, anvil, record, _token(issuer, record.asset)
        )
        assert status == 201
    assert not await InboundMessage.objects.filter(
        subject__startswith="issue-credential"
    ).aexists()

    integrations = integrations_from_settings()
    second = Listener(  # no reconciliation at all: only the stream can bring them
        _listener_config(nats_server.url, subjects, stream=stream, durable=durable),
        integrations,
    )
    task = await _start(second)
    try:

        async def published() -> bool:
            return await ClaimRecord.objects.filter(
                status=ClaimStatus.PUBLISHED
            ).acount() == len(assets)

        await _until(published, "all published after the restart", rounds=1200)
    finally:
        await _stop(second, task)
    for record in await _records(assets):
        await _written_once(record, integrations)
    notices = InboundMessage.objects.filter(subject__startswith="issue-credential")
    assert await notices.filter(stream_sequence__isnull=True).acount() == 0
    assert await notices.filter(outcome=MessageOutcome.PROCESSED).acount() >= 3
    assert not await ClaimEvent.objects.filter(actor="reconciler").aexists()
    await integrations.aclose()


@pytest.mark.asyncio
async def test_two_listeners_in_a_queue_group_do_each_effect_once(
    real_settings, sealed_asset, stand_in, issuer, anvil, nats_server, subjects
):
    assets = [await sync_to_async(sealed_asset)() for _ in range(10)]
    group = f"g{uuid.uuid4().hex[:6]}"
    bundles = [integrations_from_settings() for _ in range(2)]
    listeners = [
        Listener(_listener_config(nats_server.url, subjects, queue_group=group), b)
        for b in bundles
    ]
    tasks = [await _start(listener) for listener in listeners]
    try:
        # Every request published 3 times, all at once.
        await _publish(
            nats_server.url, [(subjects[0], {"did": a.did}) for a in assets] * 3
        )

        async def requested() -> bool:
            return await ClaimRecord.objects.filter(
                status=ClaimStatus.REQUESTED
            ).acount() == len(assets)

        await _until(requested, "claim requests filed", rounds=1200)
        records = await _records(assets)
        for record in records:
            status = await _issue(
                stand_in, issuer, anvil, record, _token(issuer, record.asset)
            )
            assert status == 201

        async def published() -> bool:
            return await ClaimRecord.objects.filter(
                status=ClaimStatus.PUBLISHED
            ).acount() == len(assets)

        await _until(published, "all published", rounds=1200)
    finally:
        for listener, task in zip(listeners, tasks, strict=True):
            await _stop(listener, task)
    # The queue group split the intake: each message recorded by one listener only.
    requests = InboundMessage.objects.filter(subject=subjects[0])
    assert await requests.acount() == 3 * len(assets)
    names = {m async for m in requests.values_list("listener", flat=True)}
    assert names == {listener.config.name for listener in listeners}
    for asset in assets:
        filed = [c for c in stand_in.claims.values() if c["requester"] == asset.did]
        assert len(filed) == 1
    for record in await _records(assets):
        await _written_once(record, bundles[0])
    for bundle in bundles:
        await bundle.aclose()


# --- (d) logs: context in JSON, never a key ----------------------------------------


@pytest.mark.asyncio
async def test_one_full_flow_logs_context_and_no_key(
    real_settings,
    sealed_asset,
    sealed_keys,
    stand_in,
    issuer,
    anvil,
    nats_server,
    subjects,
    caplog,
    capfd,
):
    caplog.set_level(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    asset = await sync_to_async(sealed_asset)()
    integrations = integrations_from_settings()
    listener = Listener(_listener_config(nats_server.url, subjects), integrations)
    task = await _start(listener)
    try:
        await _publish(nats_server.url, [(subjects[0], {"did": asset.did})])

        async def requested() -> bool:
            return await ClaimRecord.objects.filter(asset=asset).aexists()

        await _until(requested, "claim request filed")
        record = await ClaimRecord.objects.select_related("asset").aget(asset=asset)
        token = _token(issuer, asset)
        assert await _issue(stand_in, issuer, anvil, record, token) == 201

        async def published() -> bool:
            await record.arefresh_from_db()
            return record.status == ClaimStatus.PUBLISHED

        await _until(published, "published", rounds=1200)
    finally:
        await _stop(listener, task)
        await integrations.aclose()
        logging.getLogger().removeHandler(handler)
    assert django_settings.LOG_FORMAT in {"text", "json"}

    entries = _json_lines(stream.getvalue())
    by_message: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_message.setdefault(entry["message"], []).append(entry)
    filed = by_message["claim request filed"][0]
    assert (filed["asset_did"], filed["claim_id"]) == (asset.did, record.claim_id)
    published_entry = by_message["credential published"][0]
    assert published_entry["asset_did"] == asset.did
    assert published_entry["claim_id"] == record.claim_id
    assert published_entry["tx_hash"] == record.tx_hash
    processed = [e for e in entries if e["message"].startswith("message processed")]
    assert {e["subject"] for e in processed} >= {
        subjects[0],
        f"issue-credential.claim-exchange.{asset.did}.{subjects[1].split('.')[-1]}",
    }
    assert all(e["asset_did"] == asset.did for e in processed)

    captured = capfd.readouterr()
    for where, text in {
        "caplog": caplog.text,
        "json log": stream.getvalue(),
        "stdout": captured.out,
        "stderr": captured.err,
    }.items():
        LEAK_GUARD.assert_clean(text, where)
    # Self-check: the guard would see this asset's key, in any case, with or
    # without 0x.
    key_hex = sealed_keys[asset.address]
    assert LEAK_GUARD.find(key_hex.upper()) and LEAK_GUARD.find(key_hex[2:])
