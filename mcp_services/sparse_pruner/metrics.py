"""The SparsePruner's Prometheus metrics, on the registry the runner passes in.

Names come from mcp_services/common/metric_names.py; the only label is a run's outcome.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mcp_services.common import metric_names as names

# Pruning runs take from well under a second (small graphs) to minutes (millions of edges).
_RUN_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class PrunerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pruned_edges = Counter(
            names.PRUNED_EDGES.removesuffix("_total"),
            "Edges removed by committed pruning runs.",
            registry=registry,
        )
        self.edge_count = Gauge(
            names.EDGE_COUNT, "Edges of the latest graph version the pruner saw.", registry=registry
        )
        self.quality_before = Gauge(
            names.PRUNER_QUALITY_BEFORE,
            "Recall of the stored prototypes before the last committed pruning (10% cue).",
            registry=registry,
        )
        self.quality_after = Gauge(
            names.PRUNER_QUALITY_AFTER,
            "Recall of the stored prototypes after the last committed pruning (10% cue).",
            registry=registry,
        )
        self.quality_stderr = Gauge(
            names.PRUNER_QUALITY_STDERR,
            "Standard error of the last committed pruning's recall drop over the guard's cues.",
            registry=registry,
        )
        self.tau = Gauge(
            names.PRUNER_TAU,
            "L1 strength in force (units of lambda_max / 100; 0.001 = 0.1 lambda_max).",
            registry=registry,
        )
        self.tau_proposed = Gauge(
            names.PRUNER_TAU_PROPOSED,
            "tau the tuning rule proposes (growth > 5%/week -> x1.5).",
            registry=registry,
        )
        self.growth = Gauge(
            names.PRUNER_GRAPH_GROWTH,
            "Relative edge-count growth per week over the retained graph versions (NaN: unknown).",
            registry=registry,
        )
        self.solver_iterations = Gauge(
            names.PRUNER_SOLVER_ITERATIONS,
            "Coordinate sweeps of the last run's certified L1 solve.",
            registry=registry,
        )
        self.duality_gap = Gauge(
            names.PRUNER_DUALITY_GAP,
            "Certified relative duality gap of the last run's L1 solve.",
            registry=registry,
        )
        self.runs = Counter(
            names.PRUNER_RUNS.removesuffix("_total"),
            "Pruning runs by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.run_seconds = Histogram(
            names.PRUNER_RUN_SECONDS,
            "Wall time of a pruning run (read, solve, guard, backup, commit).",
            buckets=_RUN_BUCKETS,
            registry=registry,
        )
        self.conflicts = Counter(
            names.PRUNER_CONFLICTS.removesuffix("_total"),
            "Commits refused because the graph changed meanwhile (each one recomputed).",
            registry=registry,
        )
        self.backups = Gauge(
            names.PRUNER_BACKUPS, "Graph backups kept for rollback.", registry=registry
        )
