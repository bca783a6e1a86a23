"""The vendored ERC-1056 registry build (`ethr-did-registry@0.0.3`) and its addresses.

The tests and the sandbox deploy this exact bytecode on a local chain, so evops is
exercised against the contract Energy Web runs, not a re-implementation. The artefact is
read from `contracts/EthereumDIDRegistry.json` once, on first use.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
ARTIFACT_PATH = CONTRACTS_DIR / "EthereumDIDRegistry.json"

# Where Energy Web deployed this build (protocol.md section 7).
VOLTA_CHAIN_ID = 73799
EWC_CHAIN_ID = 246
VOLTA_REGISTRY_ADDRESS = to_checksum_address(
    "0xC15D5A57A8Eb0e1dCBE5D88B8f9a82017e5Cc4AF"
)
EWC_REGISTRY_ADDRESS = to_checksum_address("0xE29672f34e92b56C9169f9D485fFc8b9A136BCE4")
REGISTRY_ADDRESSES: dict[int, ChecksumAddress] = {
    VOLTA_CHAIN_ID: VOLTA_REGISTRY_ADDRESS,
    EWC_CHAIN_ID: EWC_REGISTRY_ADDRESS,
}


@cache
def _artifact() -> dict[str, Any]:
    with ARTIFACT_PATH.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def registry_abi() -> list[dict[str, Any]]:
    """The registry ABI as web3 expects it (a fresh copy the caller may mutate)."""
    abi: list[dict[str, Any]] = json.loads(json.dumps(_artifact()["abi"]))
    return abi


def registry_bytecode() -> str:
    """Creation bytecode, `0x`-prefixed hex: what a deployment transaction carries."""
    return str(_artifact()["bytecode"])


def registry_deployed_bytecode() -> str:
    """Runtime bytecode, `0x`-prefixed hex: what `eth_getCode` returns once deployed."""
    return str(_artifact()["deployedBytecode"])
