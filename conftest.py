"""Shared pytest fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# === SoftHSM2 (the PKCS#11 signer backend's tests) ===================================
# A fresh SoftHSM2 token store in a temporary directory per test session, named by
# SOFTHSM2_CONF before the module is first loaded: never a system token. Two tokens:
# `evops-test` (the one the settings point at) and `evops-spare` (for failure tests
# that need a token nobody logged in to).

SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


class SoftHsm:
    """Where the session's SoftHSM2 lives; the PINs are test-only."""

    module = SOFTHSM2_MODULE
    label = "evops-test"
    spare_label = "evops-spare"
    pin = "evops-test-pin-4711"
    so_pin = "evops-test-so-pin-0815"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "softhsm2.conf"
        self.pin_file = root / "pin"


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    import os
    import shutil
    import subprocess

    tool = shutil.which("softhsm2-util")
    if tool is None or not Path(SOFTHSM2_MODULE).is_file():
        pytest.skip("SoftHSM2 is not installed (scripts/setup installs it as root)")
    hsm = SoftHsm(tmp_path_factory.mktemp("softhsm2"))
    tokens = hsm.root / "tokens"
    tokens.mkdir()
    hsm.conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    hsm.pin_file.write_text(hsm.pin + "\n")
    hsm.pin_file.chmod(0o600)
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    for label in (hsm.label, hsm.spare_label):
        subprocess.run(
            [
                tool,
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                hsm.pin,
                "--so-pin",
                hsm.so_pin,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "SOFTHSM2_CONF": str(hsm.conf)},
        )
    yield hsm
    from assets.pkcs11 import close_pools

    close_pools()
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def token_settings(softhsm: SoftHsm, settings: Any) -> Iterator[SoftHsm]:
    """Point the PKCS#11 settings at the session's SoftHSM2 token."""
    from assets.pkcs11 import close_pools

    settings.SIGNER_BACKEND = "pkcs11"
    settings.PKCS11_MODULE = softhsm.module
    settings.PKCS11_TOKEN_LABEL = softhsm.label
    settings.PKCS11_PIN_FILE = str(softhsm.pin_file)
    settings.PKCS11_POOL_SIZE = 4
    yield softhsm
    close_pools()
