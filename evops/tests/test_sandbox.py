"""`manage.py sandbox` and `sandbox_play`, run as a newcomer runs them."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from evops.management.commands.sandbox import NOT_IN_PRODUCTION
from evops.management.commands.sandbox_play import ALL_CLAIMED

ROOT = Path(__file__).resolve().parent.parent.parent


def test_sandbox_refuses_without_debug(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match=re.escape(NOT_IN_PRODUCTION)):
        call_command("sandbox")


def test_sandbox_play_needs_a_running_sandbox(settings, tmp_path, monkeypatch):
    from evops.management.commands import sandbox, sandbox_play

    settings.DEBUG = True
    monkeypatch.setattr(sandbox_play, "STATE_FILE", tmp_path / "none.json")
    assert sandbox.STATE_FILE.name == "state.json"
    with pytest.raises(CommandError, match=re.escape(sandbox_play.NO_SANDBOX)):
        call_command("sandbox_play")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout} s")


@pytest.mark.peers
def test_sandbox_runs_plays_and_stops_everything(tmp_path):
    from evops.sandbox.peers import free_port

    port = free_port()
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="evops.settings",
        DEBUG="true",
        SECRET_KEY="sandbox-test-only-secret-key-0123456789",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        EVOPS_SANDBOX_STATE_DIR=str(tmp_path / "state"),
        SECURE_SSL_REDIRECT="false",
        LOG_LEVEL="WARNING",
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, timeout=120)
    log = (tmp_path / "sandbox.log").open("w+")
    sandbox = subprocess.Popen(
        [*manage, "sandbox", "--port", str(port), "--assets", "3"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own process group, so the test can press "Ctrl-C" on it alone.
        start_new_session=True,
    )
    try:

        def output() -> str:
            log.flush()
            return str((tmp_path / "sandbox.log").read_text())

        _wait_for(lambda: "login: admin / " in output(), 90, "the sandbox start")
        text = output()
        assert f"http://127.0.0.1:{port}/admin/dashboard/" in text

        def console_up() -> bool:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/admin/login/", timeout=2
                ) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        _wait_for(console_up, 60, "the console answering")
        play = subprocess.run(
            [*manage, "sandbox_play", "--count", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert play.returncode == 0, play.stderr[-2000:]
        assert play.stdout.count("issued (HTTP 201)") == 2
        # It waited for them: each claim's final state.
        assert play.stdout.count(": final state published") == 2, play.stdout

        def published() -> bool:
            with sqlite3.connect(tmp_path / "db.sqlite3") as db:
                rows = db.execute(
                    "select count(*) from claims_claimrecord where status='published'"
                ).fetchone()
            return bool(rows[0] == 2)

        _wait_for(published, 90, "two claims published")

        # The TSO rejects the third asset's claim: the notice goes to the issuers'
        # subjects and is routed to our claim by its id.
        rejecting = subprocess.run(
            [*manage, "sandbox_play", "--count", "1", "--reject", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rejecting.returncode == 0, rejecting.stderr[-2000:]
        assert rejecting.stdout.count("rejected (HTTP ") == 1

        def rejected() -> bool:
            with sqlite3.connect(tmp_path / "db.sqlite3") as db:
                rows = db.execute(
                    "select count(*) from claims_claimrecord where status='rejected'"
                ).fetchone()
            return bool(rows[0] == 1)

        _wait_for(rejected, 90, "the rejected claim reaching 'rejected'")
        assert ": final state rejected" in rejecting.stdout

        # Every demo asset has a claim now: say how to go on, and --fresh does.
        more = subprocess.run(
            [*manage, "sandbox_play", "--count", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert more.returncode != 0 and ALL_CLAIMED in more.stderr
        fresh = subprocess.run(
            [*manage, "sandbox_play", "--count", "1", "--fresh"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert fresh.returncode == 0, fresh.stderr[-2000:]
        assert "made 1 new demo asset(s)" in fresh.stdout
        assert ": final state published" in fresh.stdout
        # No private key in anything the commands printed.
        state_key = "issuer_key"
        assert state_key not in output() and state_key not in play.stdout
    finally:
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(sandbox.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        # Ctrl-C in a terminal: SIGINT to the foreground process group.
        os.killpg(sandbox.pid, signal.SIGINT)
        sandbox.wait(timeout=60)
        log.close()
    assert children, "the sandbox started no child processes"
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), f"child {pid} still runs after the sandbox stopped"
    assert not (tmp_path / "state" / "state.json").exists()
    assert sandbox.returncode == 0
    first_run = (tmp_path / "sandbox.log").read_text()
    assert "stopping the sandbox" in first_run

    # A second run: the same admin login, and nothing of the previous chain shown.
    [login] = re.findall(r"login: admin / (\S+)", first_run)
    log2 = (tmp_path / "sandbox2.log").open("w+")
    again = subprocess.Popen(
        [*manage, "sandbox", "--port", str(port), "--assets", "3", "--no-listener"],
        env=env,
        stdout=log2,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: "login: admin" in (tmp_path / "sandbox2.log").read_text(),
            90,
            "the second start",
        )
    finally:
        os.killpg(again.pid, signal.SIGINT)
        again.wait(timeout=60)
        log2.close()
    second_run = (tmp_path / "sandbox2.log").read_text()
    assert f"login: admin / {login} " in second_run
    assert "cleared 4 claim(s) of the previous sandbox chain" in second_run
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("select count(*) from claims_claimrecord").fetchone() == (0,)
        assert db.execute("select count(*) from assets_asset").fetchone() == (4,)
