"""The cross-implementation vectors, vendored from ../shared/testdata.

A copy lives in the repository so CI does not depend on a sibling checkout;
`test_vectors_copy_is_current` (test_jwt.py) fails if the shared file moves on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS_PATH = Path(__file__).resolve().parent / "data" / "protocol_vectors.json"
SHARED_VECTORS_PATH = (
    Path(__file__).resolve().parents[3].parent
    / "shared"
    / "testdata"
    / "protocol_vectors.json"
)

V: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
ASSET = V["asset"]
ISSUER = V["issuer"]
ROLE = V["role"]
