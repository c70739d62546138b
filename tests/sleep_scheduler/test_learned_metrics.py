"""The scheduler exports whether its last cycle had something to learn (issue 15).

The tuning alerts read a cycle's figures only from cycles that had something to learn:
``sleep_cycle_learned`` says whether the last one had, and ``sleep_learned_energy_delta`` keeps
the energy delta of the last one that had, through cycles with nothing to learn.
"""

from __future__ import annotations

import random
import re
import urllib.request

import scipy.sparse as sp

from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.domain.planted import planted_sparse

from .conftest import Pair, PairFactory


def gauge(pair: Pair, name: str) -> float:
    page = urllib.request.urlopen(pair.sched.metrics_url, timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", page, re.M)
    assert match, f"{name} is not exported"
    return float(match.group(1))


def random_states(count: int, seed: int) -> sp.csr_matrix:
    """Episodes like put-get-loop's: 3-12 random concepts of 500, no structure."""
    rng = random.Random(seed)
    states = sp.lil_matrix((count, 500))
    for r in range(count):
        states[r, rng.sample(range(500), rng.randint(3, 12))] = 1.0
    return sp.csr_matrix(states)


def cycle(pair: Pair) -> sleep_pb2.ConsolidationJob:
    job: sleep_pb2.ConsolidationJob = pair.sched.stub.StartConsolidation(
        sleep_pb2.StartConsolidationRequest(wait=True), timeout=120
    )
    assert job.state == sleep_pb2.JOB_STATE_SUCCEEDED, job.error
    return job


class TestLearnedGauges:
    def test_idle_then_learning_then_nothing_to_learn(self, start_pair: PairFactory) -> None:
        """Before any cycle both gauges are 0; a cycle of planted assemblies sets learned 1 and
        the learned delta to its (negative) energy delta; a following cycle of random episodes
        sets learned 0 and leaves the learned delta where the learning cycle put it."""
        pair = start_pair()
        assert gauge(pair, "sleep_cycle_learned") == 0.0
        assert gauge(pair, "sleep_learned_energy_delta") == 0.0
        planted = planted_sparse(300, 12, activity=(0.05, 0.08), seed=5)
        pair.put_states(planted.episodes)
        learned = cycle(pair)
        assert gauge(pair, "sleep_cycle_learned") == 1.0
        delta = gauge(pair, "sleep_learned_energy_delta")
        assert delta == gauge(pair, "energy_delta") == learned.energy_delta < 0.0
        pair.put_states(random_states(40, seed=3), prefix="concept:noise")
        cycle(pair)
        assert gauge(pair, "sleep_cycle_learned") == 0.0
        assert gauge(pair, "sleep_learned_energy_delta") == delta
