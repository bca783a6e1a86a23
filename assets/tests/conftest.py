"""Fixtures for the assets tests: test keys, key files in every import format.

Every private key a test uses comes from `new_key` (or is registered with
`LEAK_GUARD.register`), and the autouse `no_key_in_output` fixture fails any test whose
logs or captured stdout/stderr contain one of them, in any case, with or without 0x.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from evops.protocol.keys import private_key_to_address

VECTORS = Path("/work/shared/testdata/protocol_vectors.json")
KEYSTORE_PASSWORD = "correct horse battery staple"


class LeakGuard:
    """Remembers every test key and finds any of them in text."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def register(self, key_hex: str) -> str:
        self.keys.add(key_hex.lower().removeprefix("0x"))
        return key_hex

    def find(self, text: str | bytes) -> list[str]:
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        haystack = text.lower()
        return sorted(key[:8] + "..." for key in self.keys if key in haystack)

    def assert_clean(self, text: str | bytes, where: str) -> None:
        leaked = self.find(text)
        assert not leaked, f"private key(s) {leaked} leaked into {where}"


LEAK_GUARD = LeakGuard()


@dataclass(frozen=True)
class TestKey:
    hex: str  # 0x-prefixed lowercase
    address: str  # EIP-55

    def __repr__(self) -> str:
        return f"TestKey(address={self.address!r})"

    @property
    def legacy_did(self) -> str:
        return f"did:ethr:{self.address.lower()}"

    @property
    def did(self) -> str:
        return f"did:ethr:volta:{self.address}"


def make_key() -> TestKey:
    key_hex = "0x" + secrets.token_hex(32)
    LEAK_GUARD.register(key_hex)
    return TestKey(hex=key_hex, address=private_key_to_address(key_hex))


@pytest.fixture
def new_key() -> Callable[[], TestKey]:
    return make_key


@pytest.fixture
def keys() -> list[TestKey]:
    return [make_key() for _ in range(5)]


@pytest.fixture(autouse=True)
def no_key_in_output(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> Iterator[None]:
    """Fail the test if any test key shows up in its logs or its output."""
    caplog.set_level("DEBUG")
    yield
    captured = capsys.readouterr()
    LEAK_GUARD.assert_clean(caplog.text, "logs")
    LEAK_GUARD.assert_clean(captured.out, "stdout")
    LEAK_GUARD.assert_clean(captured.err, "stderr")
    # Give the output back so pytest can still show it on failure.
    print(captured.out, end="")


@pytest.fixture
def master_key() -> bytes:
    return secrets.token_bytes(32)


def b64(material: bytes) -> str:
    return base64.b64encode(material).decode()


def write_keymanager(path: Path, rows: Sequence[tuple[str | None, str | None]]) -> Path:
    """A keymanager.db with the Node tool's schema and the given (did, key) rows."""
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE dids (id INTEGER PRIMARY KEY, did TEXT, private_key TEXT)"
    )
    connection.executemany("INSERT INTO dids (did, private_key) VALUES (?, ?)", rows)
    connection.commit()
    connection.close()
    return path


def keystore_document(
    key: TestKey, password: str = KEYSTORE_PASSWORD
) -> dict[str, Any]:
    """A real V3 keystore; scrypt with n=2 keeps the tests fast."""
    secret = bytes.fromhex(key.hex[2:])
    return dict(Account.encrypt(secret, password, kdf="scrypt", iterations=2))


def write_keystore(path: Path, key: TestKey, password: str = KEYSTORE_PASSWORD) -> Path:
    path.write_text(json.dumps(keystore_document(key, password)))
    return path


@pytest.fixture
def vectors() -> dict[str, object]:
    data: dict[str, object] = json.loads(VECTORS.read_text())
    asset = data["asset"]
    issuer = data["issuer"]
    assert isinstance(asset, dict) and isinstance(issuer, dict)
    LEAK_GUARD.register(asset["private_key"])
    LEAK_GUARD.register(issuer["private_key"])
    return data
