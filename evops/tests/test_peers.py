"""The local peer stack (evops/sandbox/peers.py) against the real processes."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid

import nats
import pytest
from eth_utils.address import to_checksum_address
from web3.exceptions import ContractLogicError

from evops.integrations.registry import (
    VOLTA_REGISTRY_ADDRESS,
    registry_abi,
    registry_deployed_bytecode,
)
from evops.sandbox import peers
from evops.sandbox.peers import (
    ANVIL_ACCOUNT_0,
    ANVIL_FIRST_DEPLOYMENT,
    Anvil,
    NatsServer,
    PeerError,
    PeerStack,
    deploy_registry,
    fund,
)

pytestmark = pytest.mark.peers

VALIDITY_FOREVER = 9007199254740990


def _name(text: str) -> bytes:
    return text.encode().ljust(32, b"\0")


# --- anvil and the registry -----------------------------------------------------------


def test_anvil_serves_the_volta_chain_id_with_funded_accounts(anvil):
    w3 = anvil.web3()
    assert w3.eth.chain_id == 73799
    assert w3.eth.accounts[0] == ANVIL_ACCOUNT_0
    assert w3.eth.get_balance(ANVIL_ACCOUNT_0) > 0
    assert anvil.rpc_url == anvil.url == f"http://127.0.0.1:{anvil.port}"


def test_registry_is_the_real_bytecode_at_the_first_deployment_address(
    anvil, registry_address
):
    assert registry_address == ANVIL_FIRST_DEPLOYMENT
    code = anvil.web3().eth.get_code(registry_address)
    assert code.to_0x_hex() == registry_deployed_bytecode()


def test_registry_can_be_placed_at_the_volta_address(anvil):
    address = deploy_registry(anvil.rpc_url, at=VOLTA_REGISTRY_ADDRESS)
    assert address == VOLTA_REGISTRY_ADDRESS
    code = anvil.web3().eth.get_code(address)
    assert code.to_0x_hex() == registry_deployed_bytecode()


def test_set_attribute_emits_did_attribute_changed(anvil, registry_address):
    w3 = anvil.web3()
    identity = w3.eth.accounts[1]
    registry = w3.eth.contract(address=registry_address, abi=registry_abi())
    value = b'{"id":"x","serviceEndpoint":"Qm"}'
    tx_hash = registry.functions.setAttribute(
        identity, _name("did/svc/undefined"), value, VALIDITY_FOREVER
    ).transact({"from": identity})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    assert receipt["status"] == 1

    events = registry.events.DIDAttributeChanged().process_receipt(receipt)
    assert len(events) == 1
    args = events[0]["args"]
    assert args["identity"] == identity
    assert args["name"] == _name("did/svc/undefined")
    assert args["value"] == value
    assert args["previousChange"] == 0
    block = w3.eth.get_block(receipt["blockNumber"])
    assert args["validTo"] == block["timestamp"] + VALIDITY_FOREVER
    assert registry.functions.changed(identity).call() == receipt["blockNumber"]


def test_set_attribute_by_a_non_owner_reverts(anvil, registry_address):
    w3 = anvil.web3()
    identity, stranger = w3.eth.accounts[2], w3.eth.accounts[3]
    registry = w3.eth.contract(address=registry_address, abi=registry_abi())
    call = registry.functions.setAttribute(identity, _name("did/svc/x"), b"v", 1)
    with pytest.raises(ContractLogicError):
        call.estimate_gas({"from": stranger})
    tx_hash = call.transact({"from": stranger, "gas": 200_000})
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 0


def test_fund_sets_the_balance_of_any_address(anvil):
    address = to_checksum_address(os.urandom(20))
    fund(anvil.rpc_url, address, 12345)
    assert anvil.web3().eth.get_balance(address) == 12345
    fund(anvil.rpc_url, address, 0)
    assert anvil.web3().eth.get_balance(address) == 0


def test_own_anvil_with_block_time_mines_on_its_own():
    with Anvil(block_time=0.2, chain_id=1337) as chain:
        w3 = chain.web3()
        assert w3.eth.chain_id == 1337
        target = w3.eth.block_number + 2
        # Blocks appear with no transaction sent; poll generously (not a timing test).
        for _ in range(200):
            if w3.eth.block_number >= target:
                break
            time.sleep(0.05)
        assert w3.eth.block_number >= target
        pid = chain.pid
    assert not chain.running
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- NATS --------------------------------------------------------------------------


async def test_private_nats_pub_sub_round_trip(nats_server):
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    subject = f"evops.test.{uuid.uuid4().hex}"
    nc = await nats.connect(
        nats_server.url, connect_timeout=5, max_reconnect_attempts=0
    )
    try:
        sub = await nc.subscribe(subject)
        await nc.publish(subject, "héllo ✓".encode())
        message = await sub.next_msg(timeout=5)
        assert message.data.decode() == "héllo ✓"
    finally:
        await nc.close()


async def test_private_nats_has_jetstream(nats_server):
    nc = await nats.connect(
        nats_server.url, connect_timeout=5, max_reconnect_attempts=0
    )
    js = nc.jetstream()
    stream = f"EVOPS_{uuid.uuid4().hex[:8]}"
    try:
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        ack = await js.publish(f"{stream}.one", b"payload")
        assert (ack.stream, ack.seq) == (stream, 1)
    finally:
        # The server lives for the session: leave no stream behind.
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()


# --- lifecycle and failures of the helper itself -----------------------------------


class _ExitsAtOnce(NatsServer):
    name = "broken-nats"

    def _command(self, port: int) -> list[str]:
        return [self.binary(), "-c", "/nonexistent/evops-peers.conf"]


class _IgnoresSigterm(peers._Peer):
    """A process that ignores SIGTERM, as js-ipfs does while a `cat` is open."""

    name = "stubborn"

    def _command(self, port: int) -> list[str]:
        script = (
            "import signal, socket, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"s = socket.create_server(('127.0.0.1', {port}))\n"
            "print('listening', flush=True)\n"
            "time.sleep(600)\n"
        )
        return [sys.executable, "-c", script]

    def _is_ready(self) -> bool:
        return "listening" in self.log_path.read_text()


class _NeverReady(_IgnoresSigterm):
    name = "never-ready"

    def _is_ready(self) -> bool:
        return False


def test_a_peer_that_exits_reports_its_log_tail():
    peer = _ExitsAtOnce(start_timeout=10)
    with pytest.raises(PeerError) as info:
        peer.start()
    message = str(info.value)
    assert "broken-nats exited with code" in message
    assert "evops-peers.conf: no such file" in message  # from nats-server's log
    assert not peer.running


def test_a_peer_that_never_gets_ready_times_out_and_is_stopped():
    peer = _NeverReady(start_timeout=0.5, stop_grace=0.2)
    with pytest.raises(PeerError) as info:
        peer.start()
    assert "never-ready was not ready after 0.5 s" in str(info.value)
    assert "listening" in str(info.value)  # the log tail
    assert not peer.running


def test_stop_kills_a_process_that_ignores_sigterm():
    peer = _IgnoresSigterm(stop_grace=0.2).start()
    pid, tmpdir = peer.pid, peer.tmpdir
    assert pid is not None
    peer.stop()
    assert not peer.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not tmpdir.exists()
    peer.stop()  # idempotent


def test_context_manager_stops_and_cleans_up():
    with NatsServer() as server:
        store = server.tmpdir
        assert server.running
        assert (store / "nats.log").exists()
    assert not server.running
    assert not store.exists()


# --- the whole stack ---------------------------------------------------------------


async def test_peer_stack_starts_everything_and_points_settings_at_it():
    stack = PeerStack(registry_at=VOLTA_REGISTRY_ADDRESS)
    with stack:
        env = stack.env()
        assert env["DID_REGISTRY_ADDRESS"] == VOLTA_REGISTRY_ADDRESS
        assert env["CHAIN_ID"] == "73799"
        assert env["CHAIN_RPC_URL"] == stack.anvil.rpc_url
        assert env["NATS_URL"] == stack.nats.url
        assert env["IPFS_API_URL"] == stack.ipfs.api_url
        assert env["CREDENTIAL_STORE"] == "ipfs"
        code = stack.anvil.web3().eth.get_code(VOLTA_REGISTRY_ADDRESS)
        assert code.to_0x_hex() == registry_deployed_bytecode()
        nc = await nats.connect(env["NATS_URL"], max_reconnect_attempts=0)
        await nc.close()
        assert all(peer.running for peer in stack.peers)
    assert not any(peer.running for peer in stack.peers)
    with pytest.raises(PeerError):
        stack.env()
