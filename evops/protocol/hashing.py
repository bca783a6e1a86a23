"""Public hashing primitives of the protocol core.

Other packages (the assets app's address checks, benchmarks) need Ethereum's
keccak-256 and EIP-55 checksums with the same fast paths the protocol modules use;
they import them from here (or from `evops.protocol`), never from the private
`_crypto` module, whose layout may change. `evops.protocol._crypto.keccak256` stays
as an alias.
"""

from __future__ import annotations

from evops.protocol._crypto import checksum as checksum_address
from evops.protocol._crypto import keccak256, personal_message_hash

__all__ = ["checksum_address", "keccak256", "personal_message_hash"]
