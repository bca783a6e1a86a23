"""The production recipe's files agree with each other (scripts/prod-smoke runs the
Procfile's commands; the systemd units and the Dockerfile must run the same ones)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(": ")
        entries[name] = command
    return entries


def _exec_starts(unit: str) -> list[list[str]]:
    text = (ROOT / "deploy" / "systemd" / unit).read_text()
    return [
        shlex.split(line.split("=", 1)[1])
        for line in text.splitlines()
        if line.startswith("ExecStart=")
    ]


def _without_venv(argv: list[str]) -> list[str]:
    return [re.sub(r"^/opt/evops/\.venv/bin/", "", arg) for arg in argv]


def test_the_procfile_has_release_web_and_worker():
    entries = _procfile()
    assert set(entries) == {"release", "web", "worker"}
    assert "migrate --noinput" in entries["release"]
    assert "collectstatic --noinput" in entries["release"]
    assert entries["web"].startswith("daphne ")
    assert entries["web"].endswith("--proxy-headers evops.asgi:application")
    assert entries["worker"] == "python manage.py run_nats_listener"


def test_systemd_units_run_the_procfile_commands():
    entries = _procfile()
    [listener] = _exec_starts("evops-listener.service")
    assert " ".join(_without_venv(listener)) == entries["worker"]
    [console] = _exec_starts("evops-console.service")
    console = _without_venv(console)
    assert console[0] == "daphne" and console[-2:] == [
        "--proxy-headers",
        "evops.asgi:application",
    ]
    release = [
        " ".join(_without_venv(a)) for a in _exec_starts("evops-migrate.service")
    ]
    assert " && ".join(release) == entries["release"]


def test_the_dockerfile_collects_static_files_and_runs_daphne():
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.txt -c constraints.txt" in text
    assert "python manage.py collectstatic --noinput" in text
    assert '"--proxy-headers", "evops.asgi:application"]' in text
    assert "USER evops" in text
