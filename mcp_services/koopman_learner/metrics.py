"""The learner's domain metrics (names from mcp_services.common.metric_names)."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mcp_services.common import metric_names as names
from mcp_services.koopman_learner.domain.learner import UpdateResult, View
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig

# Online updates take microseconds to milliseconds, refits up to seconds.
UPDATE_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


class KclMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.modes = Gauge(
            names.KCL_MODES_TOTAL, "Spectral modes kept after L1 selection.", registry=registry
        )
        self.coupling_updates = Counter(
            names.COUPLING_UPDATES_TOTAL,
            "Accepted oscillator-coupling updates (an unidentifiable estimate is not one).",
            registry=registry,
        )
        self.psi_drift = Gauge(
            names.KCL_PSI_DRIFT,
            "psi-drift of the last refit against the one before, radians.",
            registry=registry,
        )
        self.psi_threshold = Gauge(
            names.KCL_PSI_DRIFT_THRESHOLD,
            "psi-drift above which the rank rule raises the rank, radians.",
            registry=registry,
        )
        self.rank = Gauge(names.KCL_RANK, "DMD rank in force.", registry=registry)
        self.recommended = Gauge(
            names.KCL_RANK_RECOMMENDED,
            "Rank the rank rule asks for (applied when auto_tune is on).",
            registry=registry,
        )
        self.prediction_error = Gauge(
            names.KCL_PREDICTION_ERROR,
            "Out-of-sample one-step error ||Y - AX|| / ||Y|| of the last update's new data.",
            registry=registry,
        )
        self.update_seconds = Histogram(
            names.KCL_UPDATE_SECONDS,
            "Time of one model update by kind (online, refit).",
            ["kind"],
            buckets=UPDATE_BUCKETS,
            registry=registry,
        )
        self.snapshots = Counter(
            names.KCL_SNAPSHOTS_PROCESSED, "Snapshots learnt from.", registry=registry
        )
        self.couplings = Gauge(
            names.KCL_COUPLING_COUNT, "Non-zero oscillator couplings in force.", registry=registry
        )
        self.spectral_radius = Gauge(
            names.KCL_SPECTRAL_RADIUS, "Largest |lambda| of the served modes.", registry=registry
        )
        self.vault_lag = Gauge(
            names.KCL_VAULT_LAG,
            "Episodes stored in the vault and not yet learnt from.",
            registry=registry,
        )

    def set_knobs(self, knobs: KoopmanLearnerConfig, rank_in_force: int) -> None:
        self.rank.set(rank_in_force)
        self.psi_threshold.set(knobs.psi_drift_threshold)

    def observe_update(self, result: UpdateResult) -> None:
        self.snapshots.inc(result.snapshots)
        if result.kind != "none":
            self.update_seconds.labels(result.kind).observe(result.update_seconds)
        if result.couplings is not None and result.couplings.accepted:
            self.coupling_updates.inc()

    def set_view(self, view: View) -> None:
        model = view.model
        self.modes.set(model.rank if model is not None else 0)
        self.rank.set(view.rank_in_force)
        self.recommended.set(view.recommended_rank)
        self.psi_drift.set(view.psi_drift)
        if not math.isnan(view.prediction_error):
            self.prediction_error.set(view.prediction_error)
        if model is not None and model.rank:
            self.spectral_radius.set(float(abs(model.eigenvalues).max()))
        links = 0 if view.couplings is None else int((view.couplings.couplings > 0).sum())
        self.couplings.set(links)
