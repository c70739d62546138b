"""The sample systemd units and logrotate file: valid for the real tools, and their commands work.

No systemd runs here, so `systemd-analyze verify` checks the units (syntax, keys, executables)
and the unit's ExecStart/ExecReload/KillSignal are exercised on a real process instead.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_services.common import metric_names as names
from mcp_services.common.config import PROJECT_ROOT
from mcp_services.common.health import wait_serving
from mcp_services.fleet.cli import SERVICES
from tests.conftest import scrape_until, service_environ

UNITS = PROJECT_ROOT / "deploy" / "systemd"
LOGROTATE = PROJECT_ROOT / "deploy" / "logrotate" / "tori-memory"


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def _instances() -> list[str]:
    text = (UNITS / "tori-memory.target").read_text()
    return [
        word.removeprefix("tori-memory@").removesuffix(".service")
        for line in text.splitlines()
        if line.startswith("Wants=")
        for word in line.removeprefix("Wants=").split()
    ]


def test_the_target_starts_exactly_the_fleet() -> None:
    assert sorted(_instances()) == sorted(s.module.removeprefix("mcp_services.") for s in SERVICES)
    for instance in _instances():
        assert importlib.util.find_spec(f"mcp_services.{instance}") is not None, instance


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    # The units as installed into this checkout (their paths point at /opt/tori-memory).
    text = (UNITS / "tori-memory@.service").read_text()
    text = text.replace("/opt/tori-memory/.venv/bin/python", sys.executable)
    text = text.replace("WorkingDirectory=/opt/tori-memory", f"WorkingDirectory={PROJECT_ROOT}")
    (tmp_path / "tori-memory@.service").write_text(text)
    shutil.copy(UNITS / "tori-memory.target", tmp_path)
    names = ["tori-memory.target"]
    for instance in _instances():
        link = tmp_path / f"tori-memory@{instance}.service"
        link.symlink_to("tori-memory@.service")
        names.append(link.name)
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:")
    for name in names:
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", f"{name}: {result.stderr}"


def test_the_units_commands_run_reload_and_stop_a_service(tmp_path: Path) -> None:
    """ExecStart starts the vault, ExecReload's SIGHUP re-reads the config (counted on the
    metrics page), KillSignal ends it with exit 0."""
    service = _unit(UNITS / "tori-memory@.service")["Service"]
    argv = service["ExecStart"].replace("%i", "episodic_vault.server").split()
    argv[0] = sys.executable
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    env = service_environ(tmp_path / "var", LOG_FORMAT="json", VAULT_INDEX_ENABLED="false")
    log = tmp_path / "vault.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out, cwd=PROJECT_ROOT)
    try:
        target = f"127.0.0.1:{env['VAULT_GRPC_PORT']}"
        assert wait_serving(target, 60, lambda: proc.poll() is None), log.read_text()
        # ExecReload: SIGHUP re-reads the (unchanged) config files; the reload is counted.
        proc.send_signal(signal.SIGHUP)
        url = f"http://127.0.0.1:{env['VAULT_METRICS_PORT']}/metrics"
        needle = f'{names.CONFIG_RELOADS}{{outcome="unchanged"}} 1.0'
        assert needle in scrape_until(url, needle, within=20), "SIGHUP did not reload"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
def test_logrotate_rotates_a_log_the_service_keeps_writing(tmp_path: Path) -> None:
    logs = tmp_path / "var" / "log"
    logs.mkdir(parents=True)
    conf = LOGROTATE.read_text().replace("/opt/tori-memory/var/log", str(logs))
    conf = conf.replace("    su root root\n", "")
    (tmp_path / "tori-memory").write_text(conf)
    log = logs / "episodic-vault.log"
    with log.open("ab") as writer:  # as the fleet opens it: append mode, held open
        writer.write(b"before rotation\n" * 10)
        writer.flush()
        result = subprocess.run(
            ["logrotate", "--force", "--state", str(tmp_path / "state"), str(tmp_path / "tori-memory")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        writer.write(b"after rotation\n")
        writer.flush()
    assert (logs / "episodic-vault.log.1").read_bytes() == b"before rotation\n" * 10
    # Append mode: the writer continues at the start of the truncated file, no hole.
    assert log.read_bytes() == b"after rotation\n"
