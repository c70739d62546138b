"""KoopmanLearner domain: DMD modes, sparse mode selection, online updates, psi-drift and
Kuramoto couplings. Plain numpy/scipy; no gRPC, no Redis.

Pipeline the service drives::

    window = build_window(traces, concept_ids)            # snapshots.py: active concepts, pairs
    model = fit_dmd(window, dt, rank=policy_rank)         # dmd.py: exact DMD (fast SVD path)
    chosen = select_modes(model, window, strength=l1)     # spdmd.py: sparse modes, polished
    summaries = describe_modes(chosen.apply(model))       # modes.py: Hz, 1/s, dominant concepts
    online = OnlineDmd.from_window(model, window)         # online_dmd.py: rank-1 updates
    online.update_trace(new_trace); online.needs_refit    # ... until a periodic refit
    report = psi_drift(previous_model, model)             # drift.py: rad; RankPolicy raises rank
    phases = phases_from_fields(phase_traces)             # phases.py (or phases_from_activations)
    couplings = estimate_couplings(phases, ids, dt, previous=last)   # couplings.py

Result dataclasses are frozen; those holding arrays compare by identity (eq=False), since array
== is elementwise, and their arrays are read-only.

Errors: every entry point raises ValueError with a message naming the argument and the fix
(the servicer maps it to INVALID_ARGUMENT). Nothing else is raised on bad input.
"""

from .couplings import (
    COUPLING_BOUNDS,
    MAX_RELATIVE_CHANGE,
    CouplingEstimate,
    CouplingStatus,
    Link,
    estimate_couplings,
)
from .dmd import DEFAULT_RANK, DmdModel, fit_dmd, one_step_residual
from .drift import (
    DEFAULT_RANK_HIGH,
    DEFAULT_THRESHOLD,
    DriftReport,
    ModeMatch,
    RankDecision,
    RankPolicy,
    drift_series,
    mode_angle,
    psi_drift,
)
from .kuramoto import coupling_drift
from .kuramoto import simulate as simulate_kuramoto
from .modes import (
    DominantConcept,
    ModeSummary,
    StabilityReport,
    describe_modes,
    dominant_concepts,
    predict,
    stability,
)
from .online_dmd import DEFAULT_FORGETTING, OnlineDmd, weighted_operator
from .phases import AnalyticPhases, phases_from_activations, phases_from_fields
from .snapshots import DEFAULT_ACTIVE_THRESHOLD, SnapshotWindow, build_window
from .spdmd import DEFAULT_MAX_MODES, SparseModeSelection, select_modes
from .svd import SvdMethod, TruncatedSvd, truncated_svd

__all__ = [
    "COUPLING_BOUNDS",
    "DEFAULT_ACTIVE_THRESHOLD",
    "DEFAULT_FORGETTING",
    "DEFAULT_MAX_MODES",
    "DEFAULT_RANK",
    "DEFAULT_RANK_HIGH",
    "DEFAULT_THRESHOLD",
    "MAX_RELATIVE_CHANGE",
    "AnalyticPhases",
    "CouplingEstimate",
    "CouplingStatus",
    "DmdModel",
    "DominantConcept",
    "DriftReport",
    "Link",
    "ModeMatch",
    "ModeSummary",
    "OnlineDmd",
    "RankDecision",
    "RankPolicy",
    "SnapshotWindow",
    "SparseModeSelection",
    "StabilityReport",
    "SvdMethod",
    "TruncatedSvd",
    "build_window",
    "coupling_drift",
    "describe_modes",
    "dominant_concepts",
    "drift_series",
    "estimate_couplings",
    "fit_dmd",
    "mode_angle",
    "one_step_residual",
    "phases_from_activations",
    "phases_from_fields",
    "predict",
    "psi_drift",
    "select_modes",
    "simulate_kuramoto",
    "stability",
    "truncated_svd",
    "weighted_operator",
]
