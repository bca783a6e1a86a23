"""`manage.py sandbox`: the whole of evops on one machine, for a newcomer (DEBUG only).

Starts the local peers (anvil with the real ERC-1056 registry, NATS, js-ipfs), the
cache-server stand-in seeded with the prequalification role and a throwaway TSO
issuer, points this process's settings and its children's environment at them,
generates demo assets (funded on the local chain: in asset mode each asset pays for
its own write), starts the NATS listener and the console (daphne's ASGI runserver,
websockets included) as child processes, and prints the admin URL and a login.
Ctrl-C stops everything it started, in reverse order. `manage.py sandbox_play` then
plays the EV dashboard and the TSO against it.

It refuses to run with DEBUG off. The admin login is made once and kept: its password
is written to `.sandbox/admin-login` (mode 0600) and printed on every run, never
reset. The throwaway issuer key is kept in `.sandbox/state.json` (mode 0600) for
`sandbox_play` only; it is never printed.

Every run starts a fresh chain, NATS, IPFS node and cache-server stand-in (all in
memory), so the claims, inbox and listener rows of the previous run describe a world
that is gone (a claim *published* on a chain that no longer exists). The sandbox
therefore clears them at start, together with the fresh chain; assets, their keys and
users are kept (the demo assets are funded again on the new chain). Persisting the
chain alone (anvil --state) would not do: the stand-in's claims and IPFS would still
be new.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

NOT_IN_PRODUCTION = "sandbox runs only with DEBUG=true (local development)."
STATE_DIR = Path(
    os.environ.get("EVOPS_SANDBOX_STATE_DIR") or Path(settings.BASE_DIR) / ".sandbox"
)
STATE_FILE = STATE_DIR / "state.json"
ADMIN_LOGIN_FILE = STATE_DIR / "admin-login"
ADMIN_USERNAME = "admin"
DEMO_LABEL = "demo-"
DEMO_BALANCE_WEI = 10**18
LISTENER_NAME = "sandbox-listener"
_STOP_GRACE = 5.0


class Command(BaseCommand):
    help = "Run evops locally (DEBUG only): peers, stand-in, listener and console."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port", type=int, default=8000, help="the console's port (default: 8000)"
        )
        parser.add_argument("--assets", type=int, default=10, help="Demo assets.")
        parser.add_argument(
            "--no-listener", action="store_true", help="Do not start the listener."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(NOT_IN_PRODUCTION)
        # Ctrl-C and SIGTERM both stop everything started (a shell may start the
        # command with SIGINT ignored, e.g. in the background).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        sandbox = Sandbox(self, port=options["port"])
        try:
            sandbox.start(assets=options["assets"], listener=not options["no_listener"])
            sandbox.wait()
        except KeyboardInterrupt:
            self.stdout.write("\nstopping the sandbox")
        finally:
            # A second Ctrl-C (or a forwarded SIGINT) must not cut the stop short and
            # leave the listener or a peer running.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            sandbox.stop()


class Sandbox:
    """Everything the command starts, so that `stop()` can stop exactly that."""

    def __init__(self, command: BaseCommand, *, port: int) -> None:
        self.command = command
        self.port = port
        self.peers: Any = None
        self.standin: Any = None
        self.redis: subprocess.Popen[bytes] | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env: dict[str, str] = {}

    def say(self, text: str) -> None:
        self.command.stdout.write(text)

    # --- start ----------------------------------------------------------------------

    def start(self, *, assets: int, listener: bool) -> None:
        from evops.protocol.dids import DID
        from evops.protocol.keys import LocalKeySigner
        from evops.sandbox.cache_server import CacheServerStandIn, role_json
        from evops.sandbox.peers import PeerError, PeerStack

        self.say("starting the local peers (anvil + registry, NATS, IPFS)...")
        try:
            self.peers = PeerStack().start()
        except PeerError as exc:
            raise CommandError(f"A local peer did not start: {exc}") from None
        self.env.update(self.peers.env())
        self.env["CHAIN_WRITE_MODE"] = "asset"

        issuer = LocalKeySigner.generate()
        issuer_did = DID.for_address(issuer.address).canonical
        role = str(settings.PREQUALIFICATION_ROLE)
        self.standin = CacheServerStandIn(
            self.peers.anvil.rpc_url,
            self.peers.nats.url,
            roles=[role_json(role, issuer_dids=[issuer_did])],
            registry_address=self.peers.registry_address,
        ).start()
        self.env["CACHE_SERVER_URL"] = self.standin.url
        self._start_redis()
        self._apply_environment()

        self._write_state(issuer, issuer_did, role)
        self._forget_previous_chain()
        login = self._admin_login()
        self._demo_assets(assets)
        if listener:
            self._spawn("listener", ["run_nats_listener", "--name", LISTENER_NAME])
        self._spawn("console", ["runserver", "--noreload", f"127.0.0.1:{self.port}"])
        self.say(
            self.command.style.SUCCESS(
                f"\nevops console: http://127.0.0.1:{self.port}/admin/dashboard/\n"
                f"login: {login}\n"
                f"cache-server stand-in: {self.standin.url}\n"
                f"chain: {self.peers.anvil.rpc_url}  NATS: {self.peers.nats.url}\n"
                "In another terminal, `manage.py sandbox_play` asks prequalification "
                "for some assets and issues their credentials as the TSO.\n"
                "Ctrl-C stops everything.\n" + _elapsed()
            )
        )

    def _start_redis(self) -> None:
        # With redis the listener's changes reach the console at once; without it
        # the console's history check picks them up within CONSOLE_POLL_SECONDS.
        binary = shutil.which("redis-server")
        if binary is None:
            self.say("redis-server not found: live updates use the history check")
            return
        from evops.sandbox.peers import free_port

        port = free_port()
        self.redis = subprocess.Popen(  # noqa: S603 - fixed argv
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(0.3)
        if self.redis.poll() is not None:
            self.say("redis-server did not start: live updates use the history check")
            self.redis = None
            return
        self.env["CHANNEL_LAYER_URL"] = f"redis://127.0.0.1:{port}/0"

    def _apply_environment(self) -> None:
        apply_environment(self.env)

    def _write_state(self, issuer: Any, issuer_did: str, role: str) -> None:
        STATE_DIR.mkdir(exist_ok=True)
        state = {
            "env": self.env,
            "issuer_did": issuer_did,
            "issuer_key": issuer.export_private_key().hex(),
            "role": role,
            "pid": os.getpid(),
        }
        descriptor = os.open(STATE_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(state, handle)

    def _forget_previous_chain(self) -> None:
        """Clear what the previous run's (now gone) chain and peers left behind."""
        from claims.models import ClaimRecord, InboundMessage, ListenerHeartbeat

        claims = ClaimRecord.objects.count()
        ClaimRecord.objects.all().delete()  # and their history (cascade)
        InboundMessage.objects.all().delete()
        ListenerHeartbeat.objects.all().delete()
        if claims:
            self.say(f"cleared {claims} claim(s) of the previous sandbox chain")

    def _admin_login(self) -> str:
        """The admin login line: made on the first run, the same on every later one."""
        from console.groups import ensure_groups

        ensure_groups()
        user = get_user_model().objects.filter(username=ADMIN_USERNAME).first()
        saved = ""
        if ADMIN_LOGIN_FILE.exists():
            saved = ADMIN_LOGIN_FILE.read_text(encoding="utf-8").strip()
        if user is not None:
            if saved and user.check_password(saved):
                return f"{ADMIN_USERNAME} / {saved}  (kept in {ADMIN_LOGIN_FILE})"
            return (
                f"{ADMIN_USERNAME} (password unchanged; `manage.py changepassword "
                f"{ADMIN_USERNAME}` sets a new one)"
            )
        password = secrets.token_urlsafe(12)
        get_user_model().objects.create_superuser(
            username=ADMIN_USERNAME, email="", password=password
        )
        STATE_DIR.mkdir(exist_ok=True)
        descriptor = os.open(
            ADMIN_LOGIN_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(password + "\n")
        return f"{ADMIN_USERNAME} / {password}  (kept in {ADMIN_LOGIN_FILE})"

    def _demo_assets(self, count: int) -> None:
        from assets import services
        from assets.models import Asset
        from evops.sandbox.peers import fund

        have = Asset.objects.filter(label__startswith=DEMO_LABEL).count()
        if have < count:
            services.asset_generate(count=count - have, label_prefix=DEMO_LABEL)
        # A fresh chain each run: fund every demo asset again.
        for address in Asset.objects.filter(label__startswith=DEMO_LABEL).values_list(
            "address", flat=True
        ):
            fund(self.env["CHAIN_RPC_URL"], address, DEMO_BALANCE_WEI)
        self.say(f"{max(have, count)} demo assets ready (labels {DEMO_LABEL}N)")

    def _spawn(self, name: str, argv: list[str]) -> None:
        manage = Path(settings.BASE_DIR) / "manage.py"
        process = subprocess.Popen(  # noqa: S603 - our own manage.py
            [sys.executable, str(manage), *argv],
            env=dict(os.environ),
            start_new_session=True,
        )
        self.children.append((name, process))

    # --- run and stop ---------------------------------------------------------------

    def wait(self) -> None:
        """Until Ctrl-C, or until a child dies (then everything stops)."""
        while True:
            for name, process in self.children:
                code = process.poll()
                if code is not None:
                    raise CommandError(f"the {name} exited with code {code}")
            time.sleep(0.5)

    def stop(self) -> None:
        for _, process in reversed(self.children):
            _terminate(process)
        self.children.clear()
        if self.redis is not None:
            _terminate(self.redis)
            self.redis = None
        if self.standin is not None:
            self.standin.stop()
            self.standin = None
        if self.peers is not None:
            self.peers.stop()
            self.peers = None
        STATE_FILE.unlink(missing_ok=True)


def _elapsed() -> str:
    """How long since scripts/run started (it exports EVOPS_RUN_STARTED)."""
    started = os.environ.get("EVOPS_RUN_STARTED", "")
    if not started.isdigit():
        return ""
    return f"ready {int(time.time()) - int(started)} s after scripts/run started\n"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def apply_environment(env: dict[str, str]) -> None:
    """Point this process (and, through os.environ, its children) at the peers."""
    os.environ.update(env)
    settings.CHAIN_RPC_URL = env["CHAIN_RPC_URL"]
    settings.CHAIN_ID = int(env["CHAIN_ID"])
    settings.DID_REGISTRY_ADDRESS = env["DID_REGISTRY_ADDRESS"]
    settings.CHAIN_WRITE_MODE = env.get("CHAIN_WRITE_MODE", "asset")
    settings.NATS_URL = env["NATS_URL"]
    settings.CREDENTIAL_STORE = env.get("CREDENTIAL_STORE", "ipfs")
    settings.IPFS_API_URL = env["IPFS_API_URL"]
    settings.CACHE_SERVER_URL = env["CACHE_SERVER_URL"]
    if env.get("CHANNEL_LAYER_URL"):
        settings.CHANNEL_LAYER_URL = env["CHANNEL_LAYER_URL"]


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=_STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
