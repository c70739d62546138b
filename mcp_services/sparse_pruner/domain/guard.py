"""The pruning run behind its quality guard, and the preview that reports it without applying.

One attempt: solve the L1 problem at ``tau`` (certified by its duality gap), keep the edges the
L1 solution keeps (above ``l1_threshold``), honour ``retention_target`` / ``max_edges_to_prune`` by
putting back the removed edges closest to entering the L1 support, then refit the survivors without
the penalty (soft shrinkage of survivors costs recall at high sparsity), unless the survivors at
their old weights recall more (the refit fits margins, not recall, and can lose on a small graph
that the removal alone leaves intact). The guard measures recall
before and after on identical cues; if the drop exceeds its limit or a prototype that was a fixed
point stops being one, the run backs off and tries again, up to ``max_backoffs`` times, and then
refuses.

The measure is deterministic and reports its own error. The cues are a function of the stored
prototypes alone (their seed is a hash of them, :func:`cue_seed`), so every evaluation of a graph
version uses the same cues: twenty evaluations of one version give one figure, and the version a
run commits is measured by the next run exactly as the run that made it measured it. There are at
least ``min_cues`` cues, and the drop's standard error over them (a paired difference,
:func:`~.recall.paired_drop`) is reported; the guard never refuses on a drop that this error
explains: its limit is ``max(max_quality_drop, GUARD_SIGMAS * stderr)``.

A back-off halves the number of edges the next attempt may remove (so backing off always
approaches the input graph) and halves ``tau`` (a warm-started re-solve) while it stays at or
above ``min_tau``. Everything here is pure: inputs are never changed, the caller commits the
returned graph (or not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from .graph import ConceptGraph, FloatArray, IndexArray, check_prototypes, graph_from_edges
from .objective import PruningProblem, build_problem, edge_gradient, lambda_max, margins
from .recall import QualityReport, assess_quality, paired_drop
from .settings import PruneSettings
from .solver import L1Solution, solve_l1

# Standard errors a recall drop must exceed before the guard may refuse for it. A drop within 2
# standard errors of zero arises from the choice of cues alone about once in 40 runs (one-sided
# normal tail, 2.3%); at 1 it would be one run in 6, so the guard would still refuse harmless
# runs on noise, and at 3 a real loss of 2.5 errors would pass. With the default 200 cues the
# error of a 5% drop is about 0.016, so 2 errors (0.03) stay below max_quality_drop (0.05) and
# the operator's limit is the one that decides; it is the small cue sets where noise decides.
GUARD_SIGMAS = 2.0

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
    drop: float = 0.0
    drop_stderr: float = 0.0
    limit: float = 0.0


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
        quality_stderr: standard error of the recall drop of the accepted (or last) attempt
            (0 when no attempt was made).
        quality_limit: the drop that attempt was held to, ``max(max_quality_drop,
            GUARD_SIGMAS * quality_stderr)``.
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
    quality_stderr: float = 0.0
    quality_limit: float = 0.0

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
    quality_stderr: float = 0.0


def cue_seed(prototypes: FloatArray) -> int:
    """The seed of the guard's cues: a hash of the prototypes (their shape and active entries).

    Deterministic across processes and machines (blake2b, not Python's salted ``hash``), and the
    same for every graph version that stores the same prototypes, so a pruned version keeps the
    cues its unpruned parent was judged on.
    """
    active = np.packbits(np.asarray(prototypes) > 0.0, axis=1)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.asarray(prototypes.shape, dtype=np.int64).tobytes())
    digest.update(active.tobytes())
    return int.from_bytes(digest.digest(), "little")


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
    before = measure_quality(graph, xi, cfg)
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
        c = _field_scale(graph, edge_i, edge_j, new_w, xi)
        candidate = graph_from_edges(graph.n_concepts, edge_i, edge_j, c * new_w, c * graph.biases)
        after = measure_quality(candidate, xi, cfg)
        # A solve that ran out of sweeps is still a certified point (its gap is recorded in the
        # attempt); recall, not the gap, decides whether the graph it proposes may be committed.
        verdict = judge(before, after, cfg.max_quality_drop)
        # The refit optimises margins on noisy copies, not recall, and on a small, already sparse
        # graph it can lose recall that removing the same edges alone keeps (measured on a graph
        # of the demo: refit 0.625 -> 0.53, the bare removal 0.625 -> 0.645). The bare removal
        # (survivors at their old weights; the input graph itself when L1 removed nothing) is
        # taken instead when the guard passes it and it recalls more, or the refit fails.
        if verdict.passed and after.recall >= before.recall:
            pass  # the refit kept the input's recall: it stands, one measurement saved
        elif np.all(keep):
            bare_verdict = judge(before, before, cfg.max_quality_drop)
            candidate, after, verdict, new_w, refit_kkt = graph, before, bare_verdict, old_w, 0.0
        else:
            bare_w = np.where(keep, old_w, 0.0)
            bare = graph_from_edges(graph.n_concepts, edge_i, edge_j, bare_w, graph.biases)
            bare_after = measure_quality(bare, xi, cfg)
            bare_verdict = judge(before, bare_after, cfg.max_quality_drop)
            if bare_verdict.passed and (not verdict.passed or bare_after.recall > after.recall):
                candidate, after, verdict = bare, bare_after, bare_verdict
                new_w, refit_kkt = bare_w, 0.0
        attempts.append(
            PruneAttempt(
                tau=tau,
                lam=solution.lam,
                edges_kept=candidate.n_edges,
                relative_gap=solution.certificate.relative_gap,
                refit_kkt_residual=refit_kkt,
                quality=after,
                passed=verdict.passed,
                reason=verdict.reason,
                sweeps=solution.sweeps,
                drop=verdict.drop,
                drop_stderr=verdict.stderr,
                limit=verdict.limit,
            )
        )
        if verdict.passed:
            gone = new_w == 0.0
            return PruningPlan(
                accepted=True,
                reason=verdict.reason,
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
                quality_stderr=verdict.stderr,
                quality_limit=verdict.limit,
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
        # No tau here: the domain's tau is a fraction of lambda_max, and the caller reports the
        # one it used (PruningPlan.tau_used) in the units its own caller set.
        f"refused after {len(attempts)} attempt{'s' if len(attempts) != 1 else ''}: "
        f"{attempts[-1].reason}",
    )
    last = attempts[-1]
    return replace(
        refused, lambda_max=lmax, quality_stderr=last.drop_stderr, quality_limit=last.limit
    )


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
        quality_stderr=plan.quality_stderr,
    )


def measure_quality(
    graph: ConceptGraph, prototypes: NDArray[np.floating], settings: PruneSettings | None = None
) -> QualityReport:
    """The guard's recall of ``prototypes`` on ``graph``: the same cues for the same prototypes.

    At least ``cues_per_pattern`` cues per prototype and ``min_cues`` in all, seeded by
    :func:`cue_seed`; ``settings.seed`` does not enter (it seeds the solver's noisy copies).

    Raises:
        ValueError: bad prototypes (settings validate themselves).
    """
    cfg = settings or PruneSettings()
    xi = check_prototypes(prototypes, graph.n_concepts)
    per_pattern = cfg.cues_per_pattern
    if xi.shape[0]:
        per_pattern = max(per_pattern, -(-cfg.min_cues // xi.shape[0]))
    return assess_quality(
        graph,
        xi,
        cue_noise=cfg.cue_noise,
        overlap_threshold=cfg.overlap_threshold,
        cues_per_pattern=per_pattern,
        seed=cue_seed(xi),
    )


@dataclass(frozen=True)
class Verdict:
    """The guard's judgement of one candidate against the graph it would replace.

    Attributes:
        passed: the candidate may be committed.
        reason: why, for a person to read.
        drop: recall lost (``before - after``, negative is a gain).
        stderr: standard error of ``drop`` over the cues.
        limit: the largest drop allowed, ``max(max_quality_drop, GUARD_SIGMAS * stderr)``.
        lost_fixed_points: prototypes that were fixed points and would stop being ones.
    """

    passed: bool
    reason: str
    drop: float
    stderr: float
    limit: float
    lost_fixed_points: int


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


def _field_scale(
    graph: ConceptGraph, edge_i: IndexArray, edge_j: IndexArray, new_w: FloatArray, xi: FloatArray
) -> float:
    """``c > 0`` that gives the refit graph the input graph's mean ``|h|`` on the prototypes.

    The margin the refit asks of noisy cues is the input graph's mean clean field, so the refit
    comes out with larger weights (about 3x on consolidated graphs), and each later run would
    compound it: energies grew without bound across prunes and energy-based tuning read noise.
    Scaling ``W`` and ``b`` together by ``c`` changes no sign of any field, so recall, fixed
    points and the dynamics are exactly those of the refit graph; only the energy scale is kept.
    """
    old = np.mean(np.abs(np.asarray(graph.weights @ xi.T).T + graph.biases))
    refit = graph_from_edges(graph.n_concepts, edge_i, edge_j, new_w, graph.biases)
    new = np.mean(np.abs(np.asarray(refit.weights @ xi.T).T + graph.biases))
    return float(old / new) if old > 0.0 and new > 0.0 else 1.0


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


def judge(before: QualityReport, after: QualityReport, max_quality_drop: float) -> Verdict:
    """Judge ``after`` against ``before`` (reports of the same cues).

    Refused: a prototype stops being a fixed point, or recall drops by more than
    ``max(max_quality_drop, GUARD_SIGMAS * stderr)``: more than the operator allows *and* more
    than the choice of cues explains. A drop within the noise is never a reason to refuse.

    Raises:
        ValueError: the reports were measured on different cue sets.
    """
    drop, stderr = paired_drop(before, after)
    limit = max(max_quality_drop, GUARD_SIGMAS * stderr)
    lost = int(np.count_nonzero(before.fixed_points & ~after.fixed_points))
    figures = (
        f"recall {before.recall:.3f} -> {after.recall:.3f} over {after.cues} cues "
        f"(drop {drop:.3f} +- {stderr:.3f})"
    )
    if lost:
        reason = f"{lost} stored prototype(s) would stop being fixed points; {figures}"
        return Verdict(False, reason, drop, stderr, limit, lost)
    if drop > limit + 1e-12:
        reason = (
            f"{figures}: the drop exceeds max_quality_drop={max_quality_drop:g} and "
            f"{GUARD_SIGMAS:g} standard errors ({GUARD_SIGMAS * stderr:.3f})"
        )
        return Verdict(False, reason, drop, stderr, limit, 0)
    if drop > max_quality_drop + 1e-12:
        why = f"within {GUARD_SIGMAS:g} standard errors ({limit:.3f}): noise of the cue set"
    else:
        why = f"<= max_quality_drop={max_quality_drop:g}"
    return Verdict(True, f"{figures}, {why}; all fixed points kept", drop, stderr, limit, 0)


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
