"""The tuning advice names a real cause, each on a cycle that causes it (issue 14 item 4).

Every case runs a real cycle through the service (vault PutEpisodes -> StartConsolidation) and
reads the advice from the job, except the oscillation rule, which needs four cycles whose energy
deltas alternate and is checked on such a sequence.
"""

from __future__ import annotations

import random

import scipy.sparse as sp

from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.domain.planted import planted_sparse
from mcp_services.sleep_scheduler.domain.tuning import advise
from tests.sleep_scheduler.conftest import Pair, PairFactory

SUCCEEDED = sleep_pb2.JOB_STATE_SUCCEEDED


def loop_states(count: int, seed: int) -> sp.csr_matrix:
    """Episodes shaped like put-get-loop's, as states: 1-6 random concepts out of 500."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        concepts = rng.sample(range(500), rng.randint(3, 12))
        rows.append(sorted(c for c in concepts if rng.random() > 0.5) or [concepts[0]])
    indptr = [0]
    for r in rows:
        indptr.append(indptr[-1] + len(r))
    idx = [c for r in rows for c in r]
    return sp.csr_matrix(([1.0] * len(idx), idx, indptr), shape=(count, 500))


def run(pair: Pair) -> sleep_pb2.ConsolidationJob:
    job: sleep_pb2.ConsolidationJob = pair.sched.stub.StartConsolidation(
        sleep_pb2.StartConsolidationRequest(wait=True, trigger="test"), timeout=120
    )
    assert job.state == SUCCEEDED, job.error
    return job


STRUCTURED = planted_sparse(300, 20, activity=(0.05, 0.08), seed=5).episodes


class TestAdvice:
    def test_a_structureless_cycle_advises_no_knob_and_says_why(
        self, start_pair: PairFactory
    ) -> None:
        """put-get-loop episodes: no prototype, note no_structure, no advice, nothing applied."""
        pair = start_pair(auto_tune=True)
        pair.put_states(loop_states(50, seed=3))
        job = run(pair)
        assert job.prototypes == 0 and job.energy_delta == 0.0
        assert any(n.startswith("no_structure:") for n in job.notes)
        assert list(job.advice) == [] and list(job.tuning) == []
        config = pair.sched.stub.GetConfig(sleep_pb2.GetConfigRequest())
        assert config.t0 == 2.0

    def test_a_slow_hot_anneal_advises_lowering_t0(self, start_pair: PairFactory) -> None:
        """t0 10 cooled by 2% a sweep settles in > 50 sweeps: settle_loops_high:lower_t0."""
        pair = start_pair(t0=10.0, anneal_decay=0.98)
        pair.put_states(STRUCTURED)
        job = run(pair)
        assert job.settle_loops > 50
        assert list(job.advice) == ["settle_loops_high:lower_t0"]

    def test_learning_that_barely_moves_advises_raising_t0(self, start_pair: PairFactory) -> None:
        """Structure to learn but a step too small to deepen it: energy_drop_low:raise_t0."""
        pair = start_pair(eta=1e-7, max_epochs=2)
        pair.put_states(STRUCTURED)
        job = run(pair)
        assert job.prototypes == 20 and job.energy_drop < 0.05
        assert list(job.advice) == ["energy_drop_low:raise_t0"]

    def test_a_healthy_cycle_advises_nothing(self, start_pair: PairFactory) -> None:
        """Structure learned with the defaults: no rule fires."""
        pair = start_pair()
        pair.put_states(STRUCTURED)
        job = run(pair)
        assert job.energy_drop >= 0.05 and job.settle_loops <= 50
        assert list(job.advice) == []

    def test_alternating_energy_deltas_advise_halving_eta(self) -> None:
        """Four learning cycles whose deltas alternate in sign: energy_delta_oscillates."""
        out = advise(2.0, 0.01, 0.5, 10, [-1.0, 0.4, -0.8, 0.3])
        assert out.reasons == ("energy_delta_oscillates:halve_eta",) and out.eta == 0.005
