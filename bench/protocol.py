"""Benchmark: EIP-191 JWT signing and verification vs raw coincurve in the same run.

Run: .venv/bin/python bench/protocol.py [seconds-per-measurement]
Goal: tokens signed/s and verified/s within 2x of raw coincurve sign / recover.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coincurve import PrivateKey, PublicKey

from evops.protocol.dids import DID
from evops.protocol.jwt import claim_request_token, verify_token
from evops.protocol.keys import LocalKeySigner


def rate(fn: Callable[[int], object], seconds: float) -> float:
    """Calls per second of fn(i), measured over about `seconds`."""
    fn(0)  # warm up
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn(count)
            count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def interleaved(
    functions: list[Callable[[int], object]], seconds: float, rounds: int = 7
) -> list[float]:
    """Best rate of each function over `rounds` short interleaved windows.

    The machine is shared, so measuring one function after the other compares
    different loads; interleaving short windows and keeping each one's best
    window compares like with like.
    """
    best = [0.0] * len(functions)
    for _ in range(rounds):
        for index, fn in enumerate(functions):
            best[index] = max(best[index], rate(fn, seconds / rounds))
    return best


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    signer = LocalKeySigner.generate()
    did = DID.for_address(signer.address)
    raw_key = PrivateKey(signer.export_private_key())
    digest = bytes(range(32))
    raw_sig = raw_key.sign_recoverable(digest, hasher=None)

    def raw_sign(i: int) -> object:
        return raw_key.sign_recoverable(i.to_bytes(32, "big"), hasher=None)

    def raw_recover(_i: int) -> object:
        return PublicKey.from_signature_and_message(raw_sig, digest, hasher=None)

    def token_sign(i: int) -> object:
        return claim_request_token(
            signer,
            did=did,
            subject=did,
            claim_type="prequalified.roles.tso.apps.elia.iam.ewc",
            claim_type_version=1,
            iat_ms=1_650_000_000_000 + i,
        )

    token = token_sign(0)
    assert isinstance(token, str)

    def token_verify(_i: int) -> object:
        return verify_token(token, did)

    names = [
        "raw coincurve sign",
        "claim-request token sign",
        "raw coincurve recover",
        "token verify (decode + recover)",
    ]
    rates = interleaved([raw_sign, token_sign, raw_recover, token_verify], seconds)
    rows = list(zip(names, rates, strict=True))
    width = max(len(name) for name, _ in rows)
    for name, per_second in rows:
        print(f"{name:<{width}}  {per_second:10.0f} /s")
    sign_ratio = rows[0][1] / rows[1][1]
    verify_ratio = rows[2][1] / rows[3][1]
    print(f"signing is {sign_ratio:.2f}x slower than raw (goal <= 2x)")
    print(f"verifying is {verify_ratio:.2f}x slower than raw (goal <= 2x)")


if __name__ == "__main__":
    main()
