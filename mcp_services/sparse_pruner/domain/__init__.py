"""SparsePruner domain: L1 pruning of the concept graph behind a recall guard (no gRPC, no I/O).

Public surface (the service layer needs nothing else):

* :func:`make_graph` / :class:`ConceptGraph` - validate a symmetric sparse ``W`` and biases ``b``.
* :class:`PruneSettings` - the knobs of a run (``tau`` relative to ``lambda_max``, thresholds
  relative to the weight RMS), validated at construction.
* :func:`plan_pruning` -> :class:`PruningPlan` - solve, refit, guard, back off or refuse.
* :func:`preview_pruning` -> :class:`PruningPreview` - the same, reported without applying.
* :func:`assess_quality` -> :class:`QualityReport` - recall of stored patterns at T = 0.
* :func:`build_problem`, :func:`solve_l1` -> :class:`L1Solution` - the certified solver itself.
* :func:`tuned_tau`, :func:`weekly_growth` - the weekly growth tuning rule.

Errors: every public function raises ``ValueError`` naming the bad argument and the fix; nothing
else is raised for bad input. Inputs are never modified.
"""

from .graph import ConceptGraph, graph_from_edges, make_graph
from .guard import PruneAttempt, PruningPlan, PruningPreview, plan_pruning, preview_pruning
from .objective import DualityCertificate, PruningProblem, build_problem, lambda_max
from .recall import QualityReport, assess_quality, settle
from .settings import PruneSettings
from .solver import L1Solution, SolveCancelled, relative_lambda, solve_l1
from .tuning import tuned_tau, weekly_growth

__all__ = [
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
    "assess_quality",
    "build_problem",
    "graph_from_edges",
    "lambda_max",
    "make_graph",
    "plan_pruning",
    "preview_pruning",
    "relative_lambda",
    "settle",
    "solve_l1",
    "tuned_tau",
    "weekly_growth",
]
