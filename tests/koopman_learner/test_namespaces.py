"""One learner per namespace: a namespace's learner follows that namespace's episodes only, and
its modes name only that namespace's concepts."""

from __future__ import annotations

import grpc
import pytest

from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.domain.synthetic import simulate
from mcp_services.koopman_learner.server import data_dir
from tests.conftest import SettingsFactory
from tests.episodic_vault.conftest import Vault
from tests.koopman_learner.conftest import LearnerFactory, stop
from tests.koopman_learner.test_follow_vault import (
    SYSTEM,
    N,
    _follower,
    _trace_episode,
    _wait,
    vault,  # noqa: F401  (a fixture, used by name)
)

BOB = (("x-tori-namespace", "bob"),)
BOB_IDS = [f"concept:bob-{i}" for i in range(N)]


class TestLearnerPerNamespace:
    def test_bobs_learner_learns_bobs_episodes_only(
        self,
        start_learner: LearnerFactory,
        make_settings: SettingsFactory,
        vault: Vault,  # noqa: F811  (the fixture)
        redis_url: str,
    ) -> None:
        """Traces stored in bob are followed by bob's learner (its modes name bob's concepts,
        its state under data/koopman/namespaces/bob) and never reach the default learner."""
        learner = start_learner(
            settings=_follower(make_settings, vault, redis_url, poll_interval_s=0.2)
        )
        traces = simulate(SYSTEM, n_traces=3, length=60, seed=0, offset=0.5, amplitudes=[0.1, 0.1])
        reply = vault.stub.PutEpisodes(
            iter([_trace_episode(k, t, BOB_IDS, "bob-trace") for k, t in enumerate(traces)]),
            metadata=BOB,
        )
        assert reply.created == 3

        def bob_caught_up() -> bool:
            status = learner.stub.GetProcessingStatus(pb.GetProcessingStatusRequest(), metadata=BOB)
            return bool(status.episodes_processed == 3)

        _wait(bob_caught_up)
        modes = learner.stub.GetSpectralModes(
            pb.GetSpectralModesRequest(top_concepts=3), metadata=BOB
        ).modes
        named = {d.concept_id for m in modes for d in m.dominant_concepts}
        assert named and all(c.startswith("concept:bob-") for c in named)
        mine = learner.stub.GetProcessingStatus(pb.GetProcessingStatusRequest())
        assert mine.episodes_processed == 0
        with pytest.raises(grpc.RpcError) as err:
            learner.stub.GetSpectralModes(pb.GetSpectralModesRequest())
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # no model: nothing seen
        stop(learner)
        assert any((data_dir(learner.settings) / "namespaces" / "bob").iterdir())
