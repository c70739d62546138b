"""KoopmanLearner config reload: each declared live key changes the running service, each other
key of its section is reported "restart needed", never applied."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.gen.tori.koopman.v1 import koopman_pb2_grpc
from mcp_services.koopman_learner.server import KoopmanLearnerService
from tests.common.reloading import (
    Reloading,
    check_readme,
    served,
    wait_for,
    walk_live,
    walk_restart,
)

SECTION = "koopman_learner"
# One step per live key; max_concepts before max_batch_snapshots, whose limit its probe would hit.
LIVE_STEPS: list[dict[str, object]] = [
    {"rank": 40},
    {"rank_high": 90},
    {"psi_drift_threshold": 0.3},
    {"l1_strength": 0.05},
    {"forgetting_factor": 0.95},
    {"max_modes": 60},
    {"auto_tune": True},
    {"refit_interval": 500},
    {"auto_couplings": False},
    {"weight_refits": True},
    {"min_persistence": 0.4},
    {"max_delays": 32},
    {"max_streams": 5},
    {"max_concepts": 3},
    {"max_batch_snapshots": 2},
]
# KoopmanConfig field for each key GetConfig reports.
REPORTED = (
    "rank",
    "rank_high",
    "psi_drift_threshold",
    "l1_strength",
    "forgetting_factor",
    "max_modes",
    "auto_tune",
    "weight_refits",
    "min_persistence",
    "max_delays",
    "max_streams",
)

Served = tuple[Reloading, koopman_pb2_grpc.KoopmanLearnerStub]


@pytest.fixture
def learner(tmp_path: Path) -> Iterator[Served]:
    # Explicit traces only: no vault to follow.
    overlay = {SECTION: {"follow_vault": False}}
    with served(tmp_path, "koopman-learner", SECTION, KoopmanLearnerService, overlay) as svc:
        channel = grpc.insecure_channel(svc.grpc_target)
        try:
            yield svc, koopman_pb2_grpc.KoopmanLearnerStub(channel)
        finally:
            channel.close()


def _snapshot(ids: list[str]) -> pb.ConceptActivation:
    return pb.ConceptActivation(concept_ids=ids, strengths=[0.5] * len(ids))


def _limit_probe(
    stub: koopman_pb2_grpc.KoopmanLearnerStub, ids: list[str], name: str
) -> Callable[[], object]:
    """The limit ``name`` the learner enforces, from the error a batch at it gets.

    The batch is a 2-snapshot trace over ``ids`` and a 1-snapshot trace, which is invalid
    whatever the limits: below them it is refused for the short trace and nothing is learnt.
    """
    batch = pb.ProcessActivationBatchRequest(
        traces=[
            pb.ActivationTrace(snapshots=[_snapshot(ids), _snapshot(ids)]),
            pb.ActivationTrace(snapshots=[_snapshot(ids[:1])]),
        ]
    )

    def probe() -> object:
        try:
            stub.ProcessActivationBatch(batch, timeout=5)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                m = re.search(rf"koopman_learner\.{name} \((\d+)\)", exc.details() or "")
                return int(m.group(1)) if m else exc.details()
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise  # neither the limit nor the short trace: a real failure
            return None
        raise AssertionError("a batch with a 1-snapshot trace was accepted")

    return probe


class TestLearnerReload:
    def test_every_live_key_changes_the_running_learner(self, learner: Served) -> None:
        """Each key, edited alone, is in force: GetConfig reports the model knobs, and a batch
        over the new max_concepts or max_batch_snapshots is refused naming the new limit."""
        svc, stub = learner

        def reported(field: str) -> Callable[[], object]:
            return lambda: getattr(stub.GetConfig(pb.GetConfigRequest(), timeout=5), field)

        observe = {field: reported(field) for field in REPORTED}
        observe["max_concepts"] = _limit_probe(stub, ["c0", "c1", "c2", "c3"], "max_concepts")
        observe["max_batch_snapshots"] = _limit_probe(stub, ["c0"], "max_batch_snapshots")
        walk_live(svc, SECTION, LIVE_STEPS, observe)
        assert stub.GetKclStats(pb.GetKclStatsRequest(), timeout=5).snapshots_processed == 0

    def test_every_other_key_needs_a_restart(self, learner: Served, tmp_path: Path) -> None:
        """dt_s, the window, the vault follower's keys and data_dir are reported, not applied."""
        svc, _ = learner
        walked = walk_restart(svc, SECTION, tmp_path / "elsewhere")
        assert {
            "dt_s",
            "window_snapshots",
            "follow_vault",
            "vault_target",
            "poll_interval_s",
            "scan_batch",
            "stream_max_gap_s",
            "data_dir",
        } <= set(walked)

    def test_a_reload_keeps_a_knob_set_by_update_config_until_its_key_is_edited(
        self, learner: Served
    ) -> None:
        """UpdateConfig's l1_strength survives a reload that changes max_modes only."""
        svc, stub = learner
        stub.UpdateConfig(pb.UpdateConfigRequest(l1_strength=0.2), timeout=5)
        svc.edit(SECTION, {"max_modes": 70})
        assert wait_for(lambda: svc.reloads("applied") == 1)
        cfg = stub.GetConfig(pb.GetConfigRequest(), timeout=5)
        assert (cfg.l1_strength, cfg.max_modes) == (pytest.approx(0.2), 70)

    def test_the_readme_says_which_keys_are_live(self, learner: Served) -> None:
        """README.md's Config reload table lists exactly the declared keys as live."""
        check_readme(learner[0], SECTION, "KoopmanLearner")
