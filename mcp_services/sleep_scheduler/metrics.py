"""The SleepScheduler's Prometheus metrics, on the registry the runner passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mcp_services.common import metric_names as names


class SleepMetrics:
    """Every domain metric of the scheduler (names in common/metric_names.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ops = Counter(
            names.CONSOL_OPS,
            "Consolidation cycles by outcome (succeeded, failed, cancelled, empty) and trigger.",
            ["outcome", "trigger"],
            registry=registry,
        )
        self.energy_delta = Gauge(
            names.ENERGY_DELTA,
            "Energy change of the replayed prototypes in the last cycle (negative = deeper).",
            registry=registry,
        )
        self.cycle_learned = Gauge(
            names.SLEEP_CYCLE_LEARNED,
            "1 when the last cycle had something to learn (a prototype formed or reinforced that "
            "the graph did not already recall), 0 when it had not or before the first cycle.",
            registry=registry,
        )
        self.learned_energy_delta = Gauge(
            names.SLEEP_LEARNED_ENERGY_DELTA,
            "energy_delta of the last cycle that had something to learn (0 before the first).",
            registry=registry,
        )
        self.energy_drop = Gauge(
            names.SLEEP_ENERGY_DROP,
            "Relative energy drop of the last cycle (-delta / |before|).",
            registry=registry,
        )
        self.settle_loops = Gauge(
            names.SLEEP_SETTLE_LOOPS,
            "Sweeps the last cycle's anneal from T0 needed to settle.",
            registry=registry,
        )
        self.t0 = Gauge(names.SLEEP_T0, "Relative start temperature T0.", registry=registry)
        self.eta = Gauge(names.SLEEP_ETA, "Wake-sleep learning rate in force.", registry=registry)
        self.episodes = Gauge(
            names.SLEEP_EPISODES_PER_CYCLE,
            "Episodes the last cycle consolidated.",
            registry=registry,
        )
        self.seconds = Histogram(
            names.SLEEP_CYCLE_SECONDS,
            "Duration of consolidation cycles.",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )
        self.stability = Gauge(
            names.SLEEP_STABILITY,
            "Label-free recall of held-out episodes after the last cycle.",
            registry=registry,
        )
        self.version = Gauge(
            names.SLEEP_GRAPH_VERSION, "Latest committed graph version.", registry=registry
        )
        self.edges = Gauge(
            names.SLEEP_GRAPH_EDGES, "Edges of the latest graph version.", registry=registry
        )
        self.prototypes = Gauge(
            names.SLEEP_PROTOTYPES, "Prototypes stored in the latest version.", registry=registry
        )
        self.tuning = Counter(
            names.SLEEP_TUNING_CHANGES,
            "Auto-tune changes applied, by rule.",
            ["rule"],
            registry=registry,
        )
        self.unconsolidated = Gauge(
            names.SLEEP_UNCONSOLIDATED,
            "Unconsolidated episodes in the vault at the last pressure check.",
            registry=registry,
        )
