"""A throw-away SoftHSM2 token for the benchmarks' PKCS#11 runs.

`softhsm_token()` creates a token store in a temporary directory, initialises one
token and sets `SOFTHSM2_CONF`, `PKCS11_MODULE`, `PKCS11_TOKEN_LABEL` and
`PKCS11_PIN` in the environment; it must run before Django settings are read and
before the PKCS#11 module is loaded. With `PKCS11_MODULE` already set (a real HSM)
it changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "evops-bench"


@contextlib.contextmanager
def softhsm_token() -> Iterator[str]:
    """Yield a description of the token in use ("SoftHSM2 ..." or the module)."""
    if os.environ.get("PKCS11_MODULE"):
        yield os.environ["PKCS11_MODULE"]
        return
    tool = shutil.which("softhsm2-util")
    if tool is None or not Path(SOFTHSM2_MODULE).is_file():
        raise SystemExit("SoftHSM2 is not installed (scripts/setup installs it)")
    with tempfile.TemporaryDirectory(prefix="evops-bench-hsm-") as tmp:
        root = Path(tmp)
        (root / "tokens").mkdir()
        conf = root / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
            "log.level = ERROR\n"
        )
        pin = secrets.token_hex(8)
        env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
        so_pin = secrets.token_hex(8)
        command = [tool, "--init-token", "--free", "--label", LABEL]
        subprocess.run(
            [*command, "--pin", pin, "--so-pin", so_pin],
            check=True,
            capture_output=True,
            env=env,
        )
        os.environ.update(
            SOFTHSM2_CONF=str(conf),
            PKCS11_MODULE=SOFTHSM2_MODULE,
            PKCS11_TOKEN_LABEL=LABEL,
            PKCS11_PIN=pin,
        )
        try:
            yield f"SoftHSM2 token {LABEL!r} (temporary)"
        finally:
            from assets.pkcs11 import close_pools

            close_pools()
