"""Local peers for tests and the sandbox: chain, NATS, IPFS, cache-server stand-in."""

from __future__ import annotations
