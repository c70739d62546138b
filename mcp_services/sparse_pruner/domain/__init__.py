"""SparsePruner domain: L1 pruning of the concept graph behind a recall guard (no gRPC, no I/O).

Public surface (the service layer needs nothing else):

* :func:`make_graph` / :class:`ConceptGraph` - validate a symmetric sparse ``W`` and biases ``b``.
* :class:`PruneSettings` - the knobs of a run (``tau`` relative to ``lambda_max``, thresholds
  relative to the weight RMS), validated at construction.
* :func:`plan_pruning` -> :class:`PruningPlan` - solve, refit, guard, back off or refuse.
* :func:`preview_pruning` -> :class:`PruningPreview` - the same, reported without applying.
* :func:`assess_quality` -> :class:`QualityReport` - recall of stored patterns at T = 0;
  :func:`measure_quality` - the guard's deterministic measure of it (cues seeded by the
  prototypes); :func:`judge` -> :class:`Verdict` - the guard's decision, never on noise.
* :func:`build_problem`, :func:`solve_l1` -> :class:`L1Solution` - the certified solver itself.
* :func:`tuned_tau`, :func:`weekly_growth` - the weekly growth tuning rule.

Beside the numerics, the modules the engine and the servicer import by name: snapshot.py (the
graph as read from the scheduler, {0, 1} <-> +-1), knobs.py (the knobs in force and a run's
overrides), jobs.py (a pruning job's computation and record), usage.py (edge usage for
GetEdgeUsage) and ports.py (:class:`~.ports.GraphSource`, what the pruner needs from the graph's
owner, and its errors).

Errors: every public function raises ``ValueError`` naming the bad argument and the fix; nothing
else is raised for bad input. Inputs are never modified.
"""

from .graph import ConceptGraph, graph_from_edges, make_graph
from .guard import (
    GUARD_SIGMAS,
    PruneAttempt,
    PruningPlan,
    PruningPreview,
    Verdict,
    cue_seed,
    judge,
    measure_quality,
    plan_pruning,
    preview_pruning,
)
from .objective import DualityCertificate, PruningProblem, build_problem, lambda_max
from .recall import QualityReport, assess_quality, paired_drop, settle
from .settings import PruneSettings
from .solver import L1Solution, SolveCancelled, relative_lambda, solve_l1
from .tuning import tuned_tau, weekly_growth

__all__ = [
    "GUARD_SIGMAS",
    "ConceptGraph",
    "DualityCertificate",
    "L1Solution",
    "PruneAttempt",
    "PruneSettings",
    "PruningPlan",
    "PruningPreview",
    "PruningProblem",
    "QualityReport",
    "SolveCancelled",
    "Verdict",
    "assess_quality",
    "build_problem",
    "cue_seed",
    "graph_from_edges",
    "judge",
    "lambda_max",
    "make_graph",
    "measure_quality",
    "paired_drop",
    "plan_pruning",
    "preview_pruning",
    "relative_lambda",
    "settle",
    "solve_l1",
    "tuned_tau",
    "weekly_growth",
]
