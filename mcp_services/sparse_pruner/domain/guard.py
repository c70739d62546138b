"""The pruning run behind its quality guard, and the preview that reports it without applying.

One attempt: solve the L1 problem at ``tau`` (certified by its duality gap), keep the edges the
L1 solution keeps (above ``l1_threshold``), honour ``retention_target`` / ``max_edges_to_prune`` by
putting back the removed edges closest to entering the L1 support, then refit the survivors without
the penalty (soft shrinkage of survivors costs recall at high sparsity). The guard measures recall
before and after on identical cues; if the drop exceeds ``max_quality_drop`` or a prototype that
was a fixed point stops being one, the run backs off and tries again, up to ``max_backoffs``
times, and then refuses. A back-off halves the number of edges the next attempt may remove (so
backing off always approaches the input graph) and halves ``tau`` (a warm-started re-solve) while
it stays at or above ``min_tau``. Everything here is pure: inputs are never
changed, the caller commits the returned graph (or not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from .graph import ConceptGraph, FloatArray, IndexArray, check_prototypes, graph_from_edges
from .objective import PruningProblem, build_problem, edge_gradient, lambda_max, margins
from .recall import QualityReport, assess_quality
from .settings import PruneSettings
from .solver import L1Solution, solve_l1

# Sweep budget of the unpenalised refit. The refit only descends from the L1 point, so stopping
# early still improves it; an unpenalised piece can be rank-deficient and crawl (measured: 1000
# sweeps without reaching 1e-6 on a 1269-edge support), which is not worth the wait.
_REFIT_SWEEPS = 100


@dataclass(frozen=True)
class PruneAttempt:
    """One try of the guard: the ``tau`` used, what it would keep and how recall fared."""

    tau: float
    lam: float
    edges_kept: int
    relative_gap: float
    refit_kkt_residual: float
    quality: QualityReport
    passed: bool
    reason: str
    sweeps: float = 0.0


@dataclass(frozen=True)
class PruningPlan:
    """The outcome of :func:`plan_pruning`.

    Attributes:
        accepted: the guard passed; ``graph`` is the pruned graph to commit.
        reason: why it was accepted or refused, for a person to read.
        graph: the pruned graph if accepted, else the input graph unchanged.
        removed_i, removed_j, removed_weights: the edges that go (``i < j``) and their old
            weights; empty when refused.
        edges_before, edges_after: undirected edge counts.
        quality_before, quality_after: recall measured on identical cues (``after`` is that of
            the last attempt when refused).
        tau_requested, tau_used: ``tau`` asked for and the one that passed (after back-offs;
            that of the last attempt when refused).
        attempts: every attempt in order.
    """

    accepted: bool
    reason: str
    graph: ConceptGraph
    removed_i: IndexArray
    removed_j: IndexArray
    removed_weights: FloatArray
    edges_before: int
    edges_after: int
    quality_before: QualityReport
    quality_after: QualityReport
    tau_requested: float
    tau_used: float
    attempts: tuple[PruneAttempt, ...]
    lambda_max: float = 0.0

    @property
    def quality_change(self) -> float:
        """``recall_after - recall_before`` (negative is a loss)."""
        return self.quality_after.recall - self.quality_before.recall

    @property
    def pruned_fraction(self) -> float:
        """Fraction of the edges removed (0 when refused)."""
        if not self.edges_before:
            return 0.0
        return (self.edges_before - self.edges_after) / self.edges_before


@dataclass(frozen=True)
class PruningPreview:
    """What a run would do, without doing it: the edges that would go and the recall change."""

    would_accept: bool
    reason: str
    removed_i: IndexArray
    removed_j: IndexArray
    removed_weights: FloatArray
    edges_before: int
    edges_after: int
    recall_before: float
    recall_after: float
    expected_quality_change: float
    tau_used: float


def plan_pruning(
    graph: ConceptGraph,
    prototypes: NDArray[np.floating],
    settings: PruneSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PruningPlan:
    """Prune ``graph`` against its stored ``prototypes`` (``(P, N)``, +-1) behind the guard.

    ``should_stop`` is polled between solver rounds and guard attempts; when it returns true the
    run raises :class:`SolveCancelled` and returns nothing.

    Raises:
        ValueError: prototypes of the wrong shape or values (settings validate themselves).
        SolveCancelled: ``should_stop`` returned true.
    """
    cfg = settings or PruneSettings()
    xi = check_prototypes(prototypes, graph.n_concepts)
    edge_i, edge_j, old_w = graph.edges()
    before = _quality(graph, xi, cfg)
    if graph.n_edges == 0:
        return _refused(graph, before, before, cfg, (), "graph has no edges to prune")
    problem = build_problem(
        graph,
        xi,
        margin=cfg.margin,
        noisy_copies=cfg.noisy_copies,
        noise=cfg.train_noise,
        seed=cfg.seed,
    )
    lmax = lambda_max(problem)
    max_removed = _removal_budget(graph.n_edges, cfg)
    threshold = cfg.l1_threshold * graph.weight_rms()
    tau = cfg.tau
    warm: FloatArray | None = None
    attempts: list[PruneAttempt] = []
    after = before
    solution: L1Solution | None = None
    for _ in range(cfg.max_backoffs + 1):
        if solution is None or solution.lam != tau * lmax:
            solution = solve_l1(
                problem,
                tau * lmax,
                tol=cfg.tol,
                max_sweeps=cfg.max_sweeps,
                initial=warm,
                lam_max=lmax,
                should_stop=should_stop,
            )
            warm = solution.weights
        keep = _choose_survivors(problem, solution, threshold, max_removed)
        # Edges the limits put back start from their old weight: they were not meant to go, and a
        # zero start could leave them at exactly zero (dropped) when the loss is already flat.
        start = np.where(solution.weights != 0.0, solution.weights, old_w)
        new_w, refit_kkt = _refit(problem, keep, start, cfg, lmax)
        candidate = graph_from_edges(graph.n_concepts, edge_i, edge_j, new_w, graph.biases)
        after = _quality(candidate, xi, cfg)
        passed, reason = _judge(before, after, solution, cfg)
        attempts.append(
            PruneAttempt(
                tau=tau,
                lam=solution.lam,
                edges_kept=candidate.n_edges,
                relative_gap=solution.certificate.relative_gap,
                refit_kkt_residual=refit_kkt,
                quality=after,
                passed=passed,
                reason=reason,
                sweeps=solution.sweeps,
            )
        )
        if passed:
            gone = new_w == 0.0
            return PruningPlan(
                accepted=True,
                reason=reason,
                graph=candidate,
                removed_i=edge_i[gone],
                removed_j=edge_j[gone],
                removed_weights=old_w[gone],
                edges_before=graph.n_edges,
                edges_after=candidate.n_edges,
                quality_before=before,
                quality_after=after,
                tau_requested=cfg.tau,
                tau_used=tau,
                attempts=tuple(attempts),
                lambda_max=lmax,
            )
        # Back off: each attempt removes at most half of what the last one did (so a run that
        # keeps backing off approaches the input graph), and tau halves while it stays above
        # min_tau; below it solves get slow (near-LP regime) for little change in the support.
        max_removed = int(np.count_nonzero(~keep)) // 2
        if max_removed == 0:
            break
        if tau * 0.5 >= cfg.min_tau:
            tau *= 0.5
    refused = _refused(
        graph,
        before,
        after,
        cfg,
        tuple(attempts),
        f"refused after {len(attempts)} attempts down to tau={attempts[-1].tau:.3g}: "
        f"{attempts[-1].reason}",
    )
    return replace(refused, lambda_max=lmax)


def preview_pruning(
    graph: ConceptGraph,
    prototypes: NDArray[np.floating],
    settings: PruneSettings | None = None,
) -> PruningPreview:
    """Report what :func:`plan_pruning` would remove and the recall change, changing nothing."""
    plan = plan_pruning(graph, prototypes, settings)
    return PruningPreview(
        would_accept=plan.accepted,
        reason=plan.reason,
        removed_i=plan.removed_i,
        removed_j=plan.removed_j,
        removed_weights=plan.removed_weights,
        edges_before=plan.edges_before,
        edges_after=plan.edges_after,
        recall_before=plan.quality_before.recall,
        recall_after=plan.quality_after.recall,
        expected_quality_change=plan.quality_change,
        tau_used=plan.tau_used,
    )


def _quality(graph: ConceptGraph, xi: FloatArray, cfg: PruneSettings) -> QualityReport:
    return assess_quality(
        graph,
        xi,
        cue_noise=cfg.cue_noise,
        overlap_threshold=cfg.overlap_threshold,
        cues_per_pattern=cfg.cues_per_pattern,
        seed=cfg.seed,
    )


def _removal_budget(n_edges: int, cfg: PruneSettings) -> int:
    """Most edges one run may remove under ``retention_target`` and ``max_edges_to_prune``."""
    budget = n_edges - int(np.ceil(cfg.retention_target * n_edges - 1e-9))
    if cfg.max_edges_to_prune is not None:
        budget = min(budget, cfg.max_edges_to_prune)
    return max(budget, 0)


def _choose_survivors(
    problem: PruningProblem, solution: L1Solution, threshold: float, max_removed: int
) -> NDArray[np.bool_]:
    """Edges kept: those above ``threshold``, plus the removed ones nearest to the L1 support.

    A zero edge's ``|dL/dw_e| / lam`` (at most 1 at the optimum) says how close it is to entering
    the support; when the limits forbid removing everything L1 dropped, the closest come back.
    """
    keep = np.abs(solution.weights) > threshold
    excess = int(np.count_nonzero(~keep)) - max_removed
    if excess > 0:
        m = margins(problem, solution.weights)
        grad = edge_gradient(problem, np.maximum(problem.thresholds - m, 0.0))
        dropped = np.flatnonzero(~keep)
        closest = dropped[np.argsort(-np.abs(grad[dropped]), kind="stable")[:excess]]
        keep[closest] = True
    return keep


def _refit(
    problem: PruningProblem,
    keep: NDArray[np.bool_],
    weights: FloatArray,
    cfg: PruneSettings,
    lmax: float,
) -> tuple[FloatArray, float]:
    """Refit the kept edges without the penalty; return full-length weights and the KKT residual."""
    out = np.zeros(problem.n_edges)
    if not np.any(keep):
        return out, 0.0
    sub = problem.restrict(keep)
    budget = min(cfg.max_sweeps, _REFIT_SWEEPS)
    refit = solve_l1(sub, 0.0, tol=cfg.tol, max_sweeps=budget, initial=weights[keep], lam_max=lmax)
    out[keep] = refit.weights
    return out, refit.certificate.kkt_residual


def _judge(
    before: QualityReport, after: QualityReport, solution: L1Solution, cfg: PruneSettings
) -> tuple[bool, str]:
    drop = before.recall - after.recall
    lost = int(np.count_nonzero(before.fixed_points & ~after.fixed_points))
    # A solve that ran out of sweeps is still a certified point (its gap is recorded in the
    # attempt); recall, not the gap, decides whether the graph it proposes may be committed.
    del solution
    if lost:
        return False, f"{lost} stored prototype(s) would stop being fixed points"
    if drop > cfg.max_quality_drop + 1e-12:
        return False, (
            f"recall would drop by {drop:.3f} (from {before.recall:.3f} to {after.recall:.3f}), "
            f"more than max_quality_drop={cfg.max_quality_drop}"
        )
    return True, (
        f"recall {before.recall:.3f} -> {after.recall:.3f} (drop {max(drop, 0.0):.3f} <= "
        f"{cfg.max_quality_drop}), all fixed points kept"
    )


def _refused(
    graph: ConceptGraph,
    before: QualityReport,
    after: QualityReport,
    cfg: PruneSettings,
    attempts: tuple[PruneAttempt, ...],
    reason: str,
) -> PruningPlan:
    empty_i = np.zeros(0, dtype=np.int64)
    return PruningPlan(
        accepted=False,
        reason=reason,
        graph=graph,
        removed_i=empty_i,
        removed_j=empty_i.copy(),
        removed_weights=np.zeros(0),
        edges_before=graph.n_edges,
        edges_after=graph.n_edges,
        quality_before=before,
        quality_after=after,
        tau_requested=cfg.tau,
        tau_used=attempts[-1].tau if attempts else cfg.tau,
        attempts=attempts,
    )
