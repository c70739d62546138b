"""The learner's memory is bounded: once its window is full, more data does not grow it.

The soak (bench/soak.py) saw the learner's RSS rise for its first minutes. That is the window of
traces filling up to `window_snapshots`; this checks, with tracemalloc inside the process, that
past that point the learner (window, streams, model, couplings, the saved state) holds what it
held, however many more episodes and traces it learns.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.adapters import state_store
from mcp_services.koopman_learner.domain.learner import Learner
from mcp_services.koopman_learner.rpc import codec
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig
from mcp_services.loadgen.workload import Workload

WINDOW = 300
CHUNK = 200  # episodes per vault Scan chunk, as the follower hands them over


class TestMemoryBounded:
    def feed(self, learner: Learner, wl: Workload, start: int, path: Path) -> int:
        """One follower chunk of the load generator's episodes (120 puts/s), then one explicit
        trace, each saved as the service does; returns the next episode number."""
        episodes = []
        for n in range(start, start + CHUNK):
            ep = wl.episode(n)
            ep.seq = n + 1
            ep.timestamp.FromNanoseconds(int((1.7e9 + n / 120.0) * 1e9))
            episodes.append(codec.activity_from_episode(ep))
        learner.process_episodes(episodes)
        state_store.save(path, learner)
        request = pb.ProcessActivationBatchRequest(traces=[wl.trace(np.random.default_rng(start))])
        traces = codec.traces_from_request(
            request, learner.knobs.dt_s, max_snapshots=10_000, max_concepts=2048
        )
        learner.process_traces(traces)
        state_store.save(path, learner)
        return start + CHUNK

    def test_a_full_window_stops_the_learner_growing(self, tmp_path: Path) -> None:
        """After the window reaches window_snapshots, three times as much data again leaves the
        traced memory within 10% (and 256 KiB) of its level at saturation."""
        wl = Workload(seed=3, run_id="mem", embedding_dim=0, n_concepts=48, n_assemblies=6)
        knobs = KoopmanLearnerConfig(
            rank=8, rank_high=12, window_snapshots=WINDOW, refit_interval=200
        )
        learner = Learner(knobs)
        path = tmp_path / state_store.FILE_NAME
        tracemalloc.start()
        try:
            n = 0
            while learner.view.window_snapshots < WINDOW - 64:
                n = self.feed(learner, wl, n, path)
            for _ in range(3):  # the first refits after saturation settle the model's shapes
                n = self.feed(learner, wl, n, path)
            saturated, _ = tracemalloc.get_traced_memory()
            fed_at_saturation = n
            while n < 4 * fed_at_saturation:
                n = self.feed(learner, wl, n, path)
            later, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert learner.view.window_snapshots <= WINDOW
        assert learner.view.counters.episodes_processed == n
        growth = later - saturated
        assert growth < max(0.1 * saturated, 256 * 1024), (saturated, later)
