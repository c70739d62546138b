"""Pruning jobs: their record, and the pure computation of one run on one graph version.

A job reads the latest graph version, computes the pruning plan (domain, off the event loop),
backs the version up, and commits the pruned graph against it; on a version conflict it discards
the backup, re-reads and recomputes. The orchestration lives in engine.py; this module holds what
a job is and what one computation returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mcp_services.common import jobs
from mcp_services.sparse_pruner.domain import PruneSettings, PruningPlan, plan_pruning
from mcp_services.sparse_pruner.domain.knobs import RunOverrides, operator_tau
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot, from_pm1, to_pm1


@dataclass(frozen=True)
class SolverFigures:
    """The certified solve of the accepted (or last) guard attempt."""

    iterations: float
    relative_gap: float
    refit_kkt_residual: float
    lam: float
    lambda_max: float
    attempts: int
    seconds: float


@dataclass(kw_only=True, eq=False)
class Job(jobs.Job):
    """One pruning run, as GetPruningStatus reports it. Mutated only by the engine (on the loop;
    the numerics thread only reads the cancel token)."""

    dry_run: bool
    overrides: RunOverrides
    reason: str = ""
    base_version: int = 0
    committed_version: int = 0
    edges_before: int = 0
    edges_after: int = 0
    quality_before: float = 0.0
    quality_after: float = 0.0
    quality_stderr: float = 0.0
    tau_requested: float = 0.0
    tau_used: float = 0.0
    solver: SolverFigures | None = None
    conflict_retries: int = 0
    backup_id: str = ""
    prototypes_checked: int = 0


@dataclass(frozen=True)
class Computation:
    """What one run computed on one graph version (nothing committed yet)."""

    base: GraphSnapshot
    plan: PruningPlan | None
    pruned: GraphSnapshot | None
    seconds: float
    refusal: str = ""

    @property
    def accepted(self) -> bool:
        return self.plan is not None and self.plan.accepted


def compute(
    base: GraphSnapshot, settings: PruneSettings, should_stop: Callable[[], bool]
) -> Computation:
    """Run the guarded pruning of ``base`` (CPU-bound: call it off the event loop).

    A graph without concepts, edges or stored prototypes is refused with a reason: the guard
    cannot judge a graph that stores nothing, so it is never pruned blind.

    Raises:
        SolveCancelled: ``should_stop`` returned true.
    """
    start = time.perf_counter()
    if base.n_concepts == 0 or base.edge_count == 0:
        return Computation(base, None, None, 0.0, f"graph version {base.version} has no edges")
    if not base.prototypes:
        return Computation(
            base,
            None,
            None,
            0.0,
            f"graph version {base.version} stores no prototypes: the quality guard has nothing "
            "to check, so the pruner refuses to prune it blind (run a consolidation first)",
        )
    plan = plan_pruning(to_pm1(base), base.pm1_prototypes(), settings, should_stop=should_stop)
    pruned = from_pm1(plan.graph, base) if plan.accepted else None
    return Computation(base, plan, pruned, time.perf_counter() - start)


def record(job: Job, result: Computation, requested_tau: float) -> None:
    """Copy what ``result`` says into ``job`` (figures only; the engine sets the state)."""
    job.base_version = result.base.version
    job.edges_before = result.base.edge_count
    job.edges_after = result.base.edge_count
    job.tau_requested = requested_tau
    job.prototypes_checked = len(result.base.prototypes)
    plan = result.plan
    if plan is None:
        return
    job.edges_after = plan.edges_after
    job.quality_before = plan.quality_before.recall
    job.quality_after = plan.quality_after.recall
    job.quality_stderr = plan.quality_stderr
    job.tau_used = operator_tau(plan.tau_used)
    last = plan.attempts[-1] if plan.attempts else None
    if last is not None:
        job.solver = SolverFigures(
            iterations=last.sweeps,
            relative_gap=last.relative_gap,
            refit_kkt_residual=last.refit_kkt_residual,
            lam=last.lam,
            lambda_max=plan.lambda_max,
            attempts=len(plan.attempts),
            seconds=result.seconds,
        )


def summary(plan: PruningPlan) -> str:
    """One line for the committed version's reason and the logs."""
    return (
        f"{plan.edges_before} -> {plan.edges_after} edges "
        f"({100.0 * plan.pruned_fraction:.1f}% pruned), recall "
        f"{plan.quality_before.recall:.3f} -> {plan.quality_after.recall:.3f} "
        f"(+- {plan.quality_stderr:.3f}), tau {operator_tau(plan.tau_used):.3g}"
    )


def plan_reason(plan: PruningPlan) -> str:
    """The plan's reason with the tau it used, in the operators' units (those of ``tau_used``).

    The domain's own tau is a fraction of ``lambda_max``; a person reading a refusal compares the
    figure with the tau they set, so only the operators' unit appears in a message.
    """
    used, asked = operator_tau(plan.tau_used), operator_tau(plan.tau_requested)
    if not plan.attempts:
        return plan.reason
    if used != asked:
        return f"{plan.reason} (tau backed off from {asked:.3g} to {used:.3g})"
    return f"{plan.reason} (tau {used:.3g})"


def removed_order(plan: PruningPlan) -> np.ndarray:
    """Indices of the plan's removed edges, smallest old ``|w|`` first."""
    return np.argsort(np.abs(plan.removed_weights), kind="stable")
