from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import evops.protocol

REPO = Path(__file__).resolve().parents[3]


def test_importing_the_package_loads_no_django():
    """The protocol core stays importable without Django (issue 3, conventions)."""
    code = (
        "import sys, evops.protocol, evops.protocol.hashing;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_exported_function_says_which_peer_behaviour_it_mirrors():
    missing = []
    for name in evops.protocol.__all__:
        value = getattr(evops.protocol, name)
        if callable(value) and not isinstance(value, type):
            doc = value.__doc__ or ""
            if "irror" not in doc and "as ethers" not in doc:
                missing.append(name)
    assert missing == []
