"""Shared pytest fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from evops.sandbox import peers as _peers  # local peers

# === local peers (evops/sandbox/peers.py) ============================================
# Session-scoped: each peer starts once per test run and stops at the end. Tests that
# need their own (block timing, a peer that goes away) start one with the classes in
# evops.sandbox.peers as a context manager. Tests using these are marked
# `@pytest.mark.peers`.


@pytest.fixture(scope="session")
def anvil() -> Iterator[_peers.Anvil]:
    """anvil (chain id 73799, instant mining) with anvil's funded default accounts.

    The registry is deployed at once, before any test sends from account 0, so it is
    always at `ANVIL_FIRST_DEPLOYMENT`.
    """
    with _peers.Anvil() as node:
        node.deploy_registry()
        yield node


@pytest.fixture(scope="session")
def registry_address(anvil: _peers.Anvil) -> str:
    """The real ethr-did-registry@0.0.3 on `anvil`, deployed from account 0."""
    assert anvil.registry_address is not None
    return anvil.registry_address


@pytest.fixture(scope="session")
def nats_server() -> Iterator[_peers.NatsServer]:
    """A private nats-server with JetStream (`.url` is nats://127.0.0.1:<port>)."""
    with _peers.NatsServer() as server:
        yield server


@pytest.fixture(scope="session")
def ipfs_node() -> Iterator[_peers.IpfsNode]:
    """An offline js-ipfs node; `.api_url` is its HTTP API base URL."""
    with _peers.IpfsNode() as node:
        yield node


# === end of local peers ==============================================================
