"""Config reload without a restart: tuning knobs change live, bad files are refused."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import yaml

from mcp_services.common import metric_names as names
from mcp_services.common.config import PROJECT_ROOT, config_files, load_config
from mcp_services.common.config_schema import Settings
from mcp_services.common.reload import Change, diff_settings, merge_live
from mcp_services.common.server import Context, ServerThread
from tests.conftest import free_ports, scrape_until


class RecordingService:
    """A service that records every live change it is handed."""

    service_names: tuple[str, ...] = ()

    def __init__(self, ctx: Context) -> None:
        self.settings = ctx.settings
        self.applied: list[list[Change]] = []
        RecordingService.last = self

    def register(self, server: grpc.aio.Server) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        if settings.sleep_scheduler.eta > 0.5:
            raise ValueError("sleep_scheduler.eta: this service refuses eta > 0.5")
        self.settings = settings
        self.applied.append(list(changes))

    last: RecordingService


def _edit(path: Path, section: str, key: str, value: object) -> None:
    tree = yaml.safe_load(path.read_text()) or {}
    tree.setdefault(section, {})[key] = value
    # A new mtime even on coarse-grained file systems: the size changes too in practice, and
    # the watcher compares both.
    path.write_text(yaml.safe_dump(tree))


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", d)
    return d


@pytest.fixture
def served(config_dir: Path, tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    grpc_port, metrics_port = free_ports(2)
    environ = {
        "TORI_VAR_DIR": str(tmp_path / "var"),
        "SLEEP_GRPC_PORT": str(grpc_port),
        "SLEEP_METRICS_PORT": str(metrics_port),
        "TORI_CONFIG_POLL_S": "0.1",
    }

    def load() -> Settings:
        return load_config("test", config_dir, environ)

    srv = ServerThread(
        "recording",
        "sleep_scheduler",
        RecordingService,
        load(),
        reload=(load, config_files("test", config_dir, environ)),
    ).start()
    try:
        yield srv, config_dir / "test.yaml"
    finally:
        srv.stop()


def _wait(cond: object, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(0.05)
    return False


class TestDiff:
    def test_tuning_keys_are_live_and_others_are_not(self) -> None:
        base = load_config("test", environ={})
        new = base.model_copy(
            update={
                "sleep_scheduler": base.sleep_scheduler.model_copy(update={"t0": 3.0}),
                "grpc": base.grpc.model_copy(update={"shutdown_grace_s": 1.5}),
            }
        )
        changes = {c.key: c for c in diff_settings(base, new)}
        assert set(changes) == {"sleep_scheduler.t0", "grpc.shutdown_grace_s"}
        assert changes["sleep_scheduler.t0"].live and changes["sleep_scheduler.t0"].new == 3.0
        assert not changes["grpc.shutdown_grace_s"].live
        merged = merge_live(base, new)
        assert merged.sleep_scheduler.t0 == 3.0
        assert merged.grpc.shutdown_grace_s == base.grpc.shutdown_grace_s


class TestLiveReload:
    def test_file_change_applies_the_knob(self, served: tuple[ServerThread, Path]) -> None:
        srv, overlay = served
        svc = RecordingService.last
        old_t0 = svc.settings.sleep_scheduler.t0
        _edit(overlay, "sleep_scheduler", "t0", old_t0 + 1.25)
        assert _wait(lambda: svc.applied), "the change was not applied"
        (change,) = svc.applied[0]
        assert (change.key, change.old, change.new) == (
            "sleep_scheduler.t0",
            old_t0,
            old_t0 + 1.25,
        )
        assert svc.settings.sleep_scheduler.t0 == old_t0 + 1.25
        url = f"http://127.0.0.1:{srv.running.metrics_port}/metrics"
        needle = f'{names.CONFIG_RELOADS}{{outcome="applied"}} 1.0'
        assert needle in scrape_until(url, needle)

    def test_invalid_file_is_refused_and_old_config_stays(
        self, served: tuple[ServerThread, Path]
    ) -> None:
        srv, overlay = served
        svc = RecordingService.last
        old_t0 = svc.settings.sleep_scheduler.t0
        _edit(overlay, "sleep_scheduler", "t0", -1)
        url = f"http://127.0.0.1:{srv.running.metrics_port}/metrics"
        needle = f'{names.CONFIG_RELOADS}{{outcome="refused"}} 1.0'
        assert needle in scrape_until(url, needle, within=10)
        assert svc.applied == []
        assert srv.running.reloader is not None
        assert srv.running.reloader.settings.sleep_scheduler.t0 == old_t0
        # Fixing the file applies the next good value.
        _edit(overlay, "sleep_scheduler", "t0", old_t0 + 0.5)
        assert _wait(lambda: svc.applied)
        assert svc.settings.sleep_scheduler.t0 == old_t0 + 0.5

    def test_value_the_service_refuses_keeps_old_config(
        self, served: tuple[ServerThread, Path]
    ) -> None:
        srv, overlay = served
        svc = RecordingService.last
        _edit(overlay, "sleep_scheduler", "eta", 0.9)
        url = f"http://127.0.0.1:{srv.running.metrics_port}/metrics"
        needle = f'{names.CONFIG_RELOADS}{{outcome="refused"}} 1.0'
        assert needle in scrape_until(url, needle, within=10)
        assert srv.running.reloader is not None
        assert srv.running.reloader.settings.sleep_scheduler.eta != 0.9
        assert svc.applied == []

    def test_non_tuning_change_needs_restart(self, served: tuple[ServerThread, Path]) -> None:
        srv, overlay = served
        assert srv.running.reloader is not None
        before = srv.running.reloader.settings.grpc.shutdown_grace_s
        _edit(overlay, "grpc", "shutdown_grace_s", before + 3)
        url = f"http://127.0.0.1:{srv.running.metrics_port}/metrics"
        needle = f'{names.CONFIG_RELOADS}{{outcome="restart_needed"}} 1.0'
        assert needle in scrape_until(url, needle, within=10)
        assert srv.running.reloader.settings.grpc.shutdown_grace_s == before
        assert RecordingService.last.applied == []
