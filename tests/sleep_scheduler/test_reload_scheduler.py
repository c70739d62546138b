"""SleepScheduler config reload: each declared live key changes the running service, each other
key of its section is reported "restart needed", never applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from tests.common.reloading import (
    Reloading,
    check_readme,
    served,
    wait_for,
    walk_live,
    walk_restart,
)

SECTION = "sleep_scheduler"
# One step per live key (two keys where the schema needs them together: cron or interval).
LIVE_STEPS: list[dict[str, object]] = [
    {"t0": 2.5},
    {"eta": 0.02},
    {"auto_tune": True},
    {"pressure_threshold": 7},
    {"t_min": 0.2},
    {"temperature_decay": 0.8},
    {"anneal_decay": 0.75},
    {"max_epochs": 123},
    {"max_episodes": 456},
    {"fade": 0.5},
    {"keep_versions": 4},
    {"pressure_poll_s": 7.5},
    {"schedule_every_s": 0.2},
    {"schedule_every_s": 0.0, "schedule_cron": "0 3 * * *"},
]


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[tuple[Reloading, sleep_pb2_grpc.SleepSchedulerStub]]:
    # No pressure checks at start: the vault this scheduler would ask is not running.
    overlay = {SECTION: {"pressure_threshold": 0}}
    with served(tmp_path, "sleep-scheduler", SECTION, SleepSchedulerService, overlay) as svc:
        channel = grpc.insecure_channel(svc.grpc_target)
        try:
            yield svc, sleep_pb2_grpc.SleepSchedulerStub(channel)
        finally:
            channel.close()


class TestSchedulerReload:
    def test_every_live_key_changes_the_running_scheduler(
        self, scheduler: tuple[Reloading, sleep_pb2_grpc.SleepSchedulerStub]
    ) -> None:
        """Each key, edited alone, is in force: GetConfig shows the knobs it reports, a scheduled
        consolidation starts once schedule_every_s is set, the rest read where they act."""
        svc, stub = scheduler

        def config(field: str) -> object:
            return getattr(stub.GetConfig(sleep_pb2.GetConfigRequest(), timeout=5), field)

        def every_s() -> object:
            # In force means running: with an interval set, a consolidation it started shows up.
            every = svc.running(f"{SECTION}.schedule_every_s")
            recent = stub.GetReplayStats(sleep_pb2.GetReplayStatsRequest(), timeout=5).recent
            return every if not every or any(j.trigger == "schedule" for j in recent) else None

        observe = {
            "t0": lambda: config("t0"),
            "eta": lambda: config("eta"),
            "auto_tune": lambda: config("auto_tune"),
            "pressure_threshold": lambda: config("pressure_threshold"),
            "schedule_every_s": every_s,
        }
        walk_live(svc, SECTION, LIVE_STEPS, observe)

    def test_every_other_key_needs_a_restart(
        self, scheduler: tuple[Reloading, sleep_pb2_grpc.SleepSchedulerStub], tmp_path: Path
    ) -> None:
        """graph_dir and lease_ttl_s (and any key not declared live) are reported, not applied."""
        svc, _ = scheduler
        walked = walk_restart(svc, SECTION, tmp_path / "elsewhere")
        assert {"graph_dir", "lease_ttl_s"} <= set(walked)

    def test_a_reload_keeps_a_knob_set_by_update_config_until_its_key_is_edited(
        self, scheduler: tuple[Reloading, sleep_pb2_grpc.SleepSchedulerStub]
    ) -> None:
        """UpdateConfig's t0 survives a reload that changes eta only."""
        svc, stub = scheduler
        stub.UpdateConfig(
            sleep_pb2.UpdateConfigRequest(config=sleep_pb2.SchedulerConfig(t0=3.3), fields=["t0"]),
            timeout=5,
        )
        svc.edit(SECTION, {"eta": 0.03})
        assert wait_for(lambda: svc.reloads("applied") == 1)
        cfg = stub.GetConfig(sleep_pb2.GetConfigRequest(), timeout=5)
        assert (cfg.t0, cfg.eta) == (3.3, 0.03)

    def test_a_bad_cron_refuses_the_whole_reload(
        self, scheduler: tuple[Reloading, sleep_pb2_grpc.SleepSchedulerStub]
    ) -> None:
        """The schema cannot check a cron expression; the scheduler refuses it, and the t0
        edited with it is not applied either."""
        svc, stub = scheduler
        t0 = stub.GetConfig(sleep_pb2.GetConfigRequest(), timeout=5).t0
        svc.edit(SECTION, {"t0": t0 + 0.5, "schedule_cron": "every day at noon"})
        assert wait_for(lambda: svc.reloads("refused") == 1)
        assert stub.GetConfig(sleep_pb2.GetConfigRequest(), timeout=5).t0 == t0
        assert svc.running(f"{SECTION}.schedule_cron") == ""
        assert svc.reloads("applied") == 0

    def test_the_readme_says_which_keys_are_live(
        self, scheduler: tuple[Reloading, sleep_pb2_grpc.SleepSchedulerStub]
    ) -> None:
        """README.md's Config reload table lists exactly the declared keys as live."""
        check_readme(scheduler[0], SECTION, "SleepScheduler")
