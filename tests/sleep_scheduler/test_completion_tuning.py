"""Tests of pattern completion and the tuning rules."""

from __future__ import annotations

import pytest

from mcp_services.sleep_scheduler.domain import (
    ConceptActivation,
    ConceptGraph,
    ConceptIndex,
    consolidate,
)
from mcp_services.sleep_scheduler.domain.completion import complete
from mcp_services.sleep_scheduler.domain.tuning import advise, energy_delta_oscillates


def _assemblies() -> tuple[ConceptGraph, list[list[str]]]:
    groups = [[f"g{g}:{i}" for i in range(10)] for g in range(4)]
    eps = [ConceptActivation.of_active(grp) for grp in groups for _ in range(3)]
    return consolidate(ConceptGraph.empty(ConceptIndex()), eps).graph, groups


class TestCompletion:
    def test_partial_cue_completes_to_its_assembly(self) -> None:
        """A cue with 6 of an assembly's 10 concepts settles to the whole assembly."""
        graph, groups = _assemblies()
        done = complete(graph, ConceptActivation.of_active(groups[1][:6]))
        assert set(done.concept_ids) == set(groups[1])
        assert set(done.added) == set(groups[1][6:])
        assert done.settled and done.energy <= done.cue_energy

    def test_unknown_concepts_are_reported_and_ignored(self) -> None:
        """Cue concepts the graph never saw come back in ``unknown``."""
        graph, groups = _assemblies()
        done = complete(graph, ConceptActivation.of_active([*groups[0][:7], "never:seen"]))
        assert done.unknown == ("never:seen",)
        assert set(done.concept_ids) == set(groups[0])


class TestTuning:
    def test_small_energy_drop_raises_t0(self) -> None:
        """An energy drop under 5% raises T0."""
        advice = advise(t0=2.0, eta=0.01, energy_drop=0.01, settle_loops=10)
        assert advice.t0 > 2.0 and advice.eta == 0.01

    def test_many_settle_loops_lower_t0(self) -> None:
        """More than 50 settle loops lowers T0, even if the energy drop is small too."""
        advice = advise(t0=2.0, eta=0.01, energy_drop=0.0, settle_loops=80)
        assert advice.t0 < 2.0

    def test_oscillating_energy_delta_halves_eta(self) -> None:
        """Energy deltas alternating in sign halve eta."""
        advice = advise(2.0, 0.01, 0.5, 10, energy_deltas=[-1.0, 0.5, -0.4, 0.3])
        assert advice.eta == pytest.approx(0.005)
        assert not energy_delta_oscillates([-1.0, -0.5, -0.4, -0.3])

    def test_healthy_cycle_changes_nothing(self) -> None:
        """A cycle within every bound leaves T0 and eta alone."""
        assert not advise(2.0, 0.01, 0.3, 20, [-1.0, -0.5, -0.2]).changed
