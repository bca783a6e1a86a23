from __future__ import annotations

# The asset admin pages must never show key material: the assets suite's leak guard
# (autouse) checks every console test's output too.
import pytest

from assets.tests.conftest import no_key_in_output

__all__ = ["no_key_in_output", "redis_url"]


@pytest.fixture
def redis_url():
    import shutil
    import subprocess
    import time

    from evops.sandbox.peers import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
