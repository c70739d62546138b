"""The scheduler's memory is bounded over many consolidation cycles.

The soak (bench/soak.py) runs a cycle every ~20 s for a quarter of an hour. Each cycle reads a
batch of episodes, builds its states, runs the sleep epochs and commits a version; what it keeps
afterwards is the latest graph (cached), its prototypes (bounded by the assemblies the episodes
hold, merged) and the last jobs' figures (HISTORY). This runs cycles through a real scheduler and
vault in this process and checks, with tracemalloc filtered to the scheduler's own code, that after
the first cycles the memory it holds stops growing.
"""

from __future__ import annotations

import tracemalloc

from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.loadgen.workload import Workload
from tests.sleep_scheduler.conftest import Pair, PairFactory

BATCH = 150
SCHEDULER_CODE = tracemalloc.Filter(True, "*/mcp_services/sleep_scheduler/*", all_frames=True)


def cycle(pair: Pair, wl: Workload, start: int) -> int:
    """Put BATCH new episodes of the planted assemblies and consolidate them; the next number."""
    reqs = [
        episodic_pb2.PutEpisodeRequest(episode=wl.episode(n)) for n in range(start, start + BATCH)
    ]
    assert pair.vault.PutEpisodes(iter(reqs)).created == BATCH
    job = pair.sched.stub.StartConsolidation(
        # A deadline, not a speed bar: a cycle under tracemalloc on a loaded machine is slow.
        sleep_pb2.StartConsolidationRequest(wait=True, trigger="test"),
        timeout=900,
    )
    assert job.state == sleep_pb2.JOB_STATE_SUCCEEDED and job.episodes_processed == BATCH, job
    return start + BATCH


def held_by_scheduler() -> int:
    snap = tracemalloc.take_snapshot().filter_traces([SCHEDULER_CODE])
    return sum(stat.size for stat in snap.statistics("filename"))


class TestMemoryBounded:
    def test_cycles_past_saturation_hold_no_more_memory(self, start_pair: PairFactory) -> None:
        """After 4 cycles (the assemblies' prototypes all found), 12 more cycles over new episodes
        leave the memory allocated from the scheduler's code within 10% (and 256 KiB)."""
        pair = start_pair()
        wl = Workload(seed=5, run_id="mem", embedding_dim=8, n_concepts=64, n_assemblies=6)
        # Two cycles before tracing compile every numba kernel a cycle uses (the second one
        # rehearses the first one's prototypes): compiling under tracemalloc takes minutes.
        n = cycle(pair, wl, cycle(pair, wl, 0))
        # Only allocations made after start() are traced, and 12 frames reach from numpy's
        # internals back to the scheduler's code: the filter stays cheap.
        tracemalloc.start(12)
        try:
            for _ in range(2):
                n = cycle(pair, wl, n)
            saturated = held_by_scheduler()
            stats = pair.sched.stub.GetReplayStats(sleep_pb2.GetReplayStatsRequest())
            prototypes = stats.prototype_count
            for _ in range(12):
                n = cycle(pair, wl, n)
            later = held_by_scheduler()
        finally:
            tracemalloc.stop()
        stats = pair.sched.stub.GetReplayStats(sleep_pb2.GetReplayStatsRequest())
        assert stats.cycles_total == 16 and stats.episodes_total == n
        assert stats.prototype_count == prototypes <= wl.n_assemblies
        assert later - saturated < max(0.1 * saturated, 256 * 1024), (saturated, later)
