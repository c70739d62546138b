"""SparsePruner config reload: each declared live key changes the running service, each other key
of its section is reported "restart needed", never applied."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc
from mcp_services.sparse_pruner.server import SparsePrunerService
from tests.common.reloading import (
    Reloading,
    check_readme,
    served,
    wait_for,
    walk_live,
    walk_restart,
)

SECTION = "sparse_pruner"
# One step per live key. The schedule comes last: dry runs first, then an interval short enough
# that a scheduled run shows both, then off again.
LIVE_STEPS: list[dict[str, object]] = [
    {"tau": 0.002},
    {"l1_threshold": 0.02},
    {"max_quality_drop": 0.1},
    {"auto_tune": True},
    {"retention_target": 0.2},
    {"max_edges_to_prune": 50},
    {"max_backoffs": 3},
    {"backup_retention": 4},
    {"trigger_on_consolidation": False},
    {"max_conflict_retries": 5},
    {"schedule_dry_run": True},
    {"schedule_interval_s": 0.2},
    {"schedule_interval_s": 0.0},
]

Served = tuple[Reloading, pruner_pb2_grpc.SparsePrunerStub]


@pytest.fixture
def pruner(tmp_path: Path) -> Iterator[Served]:
    # The scheduler it would prune is not running: a scheduled run fails fast instead of waiting.
    overlay = {SECTION: {"scheduler_timeout_s": 2}}
    with served(tmp_path, "sparse-pruner", SECTION, SparsePrunerService, overlay) as svc:
        channel = grpc.insecure_channel(svc.grpc_target)
        try:
            yield svc, pruner_pb2_grpc.SparsePrunerStub(channel)
        finally:
            channel.close()


def _config(stub: pruner_pb2_grpc.SparsePrunerStub) -> pruner_pb2.PrunerConfig:
    cfg: pruner_pb2.PrunerConfig = stub.GetConfig(pruner_pb2.GetConfigRequest(), timeout=5)
    return cfg


class TestPrunerReload:
    def test_every_live_key_changes_the_running_pruner(self, pruner: Served) -> None:
        """Each key, edited alone, is in force: GetConfig reports every knob and the interval,
        and a run the schedule starts is a dry run once schedule_dry_run is set."""
        svc, stub = pruner

        def knob(name: str) -> Callable[[], object]:
            return lambda: getattr(_config(stub), name)

        def interval() -> object:
            every = _config(stub).schedule_interval_s
            if every:
                # In force means running: a scheduled job appears, a dry run as configured.
                try:
                    job = stub.GetPruningStatus(pruner_pb2.GetPruningStatusRequest(), timeout=5)
                except grpc.RpcError:
                    return None  # no job yet
                if job.trigger != "schedule" or not job.dry_run:
                    return None
            return every

        names = {k for step in LIVE_STEPS for k in step} - {"schedule_dry_run"}
        observe = {name: knob(name) for name in names}
        observe["schedule_interval_s"] = interval
        walk_live(svc, SECTION, LIVE_STEPS, observe)

    def test_every_other_key_needs_a_restart(self, pruner: Served, tmp_path: Path) -> None:
        """backup_dir, scheduler_timeout_s and the auto-tune windows are reported, not applied."""
        svc, _ = pruner
        walked = walk_restart(svc, SECTION, tmp_path / "elsewhere")
        assert {
            "backup_dir",
            "scheduler_timeout_s",
            "growth_min_window_s",
            "auto_tune_cooldown_s",
        } <= set(walked)

    def test_a_reload_keeps_a_knob_set_by_update_config_until_its_key_is_edited(
        self, pruner: Served
    ) -> None:
        """UpdateConfig's tau survives a reload that changes l1_threshold only."""
        svc, stub = pruner
        stub.UpdateConfig(pruner_pb2.UpdateConfigRequest(tau=0.003), timeout=5)
        svc.edit(SECTION, {"l1_threshold": 0.03})
        assert wait_for(lambda: svc.reloads("applied") == 1)
        cfg = _config(stub)
        assert (cfg.tau, cfg.l1_threshold) == (0.003, 0.03)

    def test_dry_run_alone_keeps_the_interval_schedule_pruning_set(self, pruner: Served) -> None:
        """Editing schedule_dry_run applies it without resetting the interval set by RPC."""
        svc, stub = pruner
        stub.SchedulePruning(pruner_pb2.SchedulePruningRequest(interval_s=3600.0), timeout=5)
        svc.edit(SECTION, {"schedule_dry_run": True})
        assert wait_for(lambda: svc.running(f"{SECTION}.schedule_dry_run") is True)
        assert _config(stub).schedule_interval_s == 3600.0

    def test_the_readme_says_which_keys_are_live(self, pruner: Served) -> None:
        """README.md's Config reload table lists exactly the declared keys as live."""
        check_readme(pruner[0], SECTION, "SparsePruner")
