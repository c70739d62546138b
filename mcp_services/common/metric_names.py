"""Every metric name the fleet exports, in one place.

Dashboards, alert rules and their tests import these names, so a rename breaks a test rather than
a panel. Labels stay low-cardinality: never an episode, job or caller id.
"""

from __future__ import annotations

# Standard gRPC server metrics (the names of go-grpc-prometheus / py-grpc-prometheus).
GRPC_SERVER_STARTED = "grpc_server_started_total"
GRPC_SERVER_HANDLED = "grpc_server_handled_total"
GRPC_SERVER_HANDLING_SECONDS = "grpc_server_handling_seconds"
GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

# Event bus.
EVENTS_PUBLISHED = "tori_events_published_total"
EVENTS_DROPPED = "tori_events_dropped_total"
EVENT_BUS_CONNECTED = "tori_event_bus_connected"

# EpisodicVault.
VAULT_EPISODE_COUNT = "vault_episode_count"
VAULT_SIZE_MB = "vault_size_mb"
VAULT_SIZE_BYTES = "vault_size_bytes"
VAULT_PUT_SECONDS = "vault_put_seconds"
VAULT_GET_SECONDS = "vault_get_seconds"
VAULT_EPISODES_STORED = "vault_episodes_stored_total"
VAULT_REJECTED = "vault_rejected_total"

# Tuning knobs in force, exported by every service that has them.
SLEEP_T0 = "sleep_t0"
SLEEP_ETA = "sleep_eta"
PRUNER_TAU = "pruner_tau"
KCL_RANK = "kcl_rank"

# KoopmanLearner.
KCL_MODES_TOTAL = "kcl_modes_total"
COUPLING_UPDATES_TOTAL = "coupling_updates_total"
KCL_PSI_DRIFT = "kcl_psi_drift"
KCL_PSI_DRIFT_THRESHOLD = "kcl_psi_drift_threshold"
KCL_RANK_RECOMMENDED = "kcl_rank_recommended"
KCL_PREDICTION_ERROR = "kcl_prediction_error"
KCL_UPDATE_SECONDS = "kcl_update_seconds"
KCL_SNAPSHOTS_PROCESSED = "kcl_snapshots_processed_total"
KCL_COUPLING_COUNT = "kcl_coupling_count"
KCL_SPECTRAL_RADIUS = "kcl_spectral_radius"
KCL_VAULT_LAG = "kcl_vault_lag_episodes"

# Config reloads by outcome (applied, unchanged, refused, restart_needed).
CONFIG_RELOADS = "tori_config_reloads_total"

# SparsePruner (the tau it uses is PRUNER_TAU above, in operator units).
PRUNED_EDGES = "pruned_edges_total"
EDGE_COUNT = "edge_count"
PRUNER_QUALITY_BEFORE = "pruner_quality_before"
PRUNER_QUALITY_AFTER = "pruner_quality_after"
PRUNER_QUALITY_STDERR = "pruner_quality_stderr"
PRUNER_SOLVER_ITERATIONS = "pruner_solver_iterations"
PRUNER_DUALITY_GAP = "pruner_duality_gap"
PRUNER_GRAPH_GROWTH = "pruner_graph_growth_weekly"
PRUNER_TAU_PROPOSED = "pruner_tau_proposed"
PRUNER_RUNS = "pruner_runs_total"
PRUNER_RUN_SECONDS = "pruner_run_seconds"
PRUNER_CONFLICTS = "pruner_commit_conflicts_total"
PRUNER_BACKUPS = "pruner_backups"

# SleepScheduler (its knobs in force are SLEEP_T0 / SLEEP_ETA above).
CONSOL_OPS = "consol_ops_total"
ENERGY_DELTA = "energy_delta"
SLEEP_ENERGY_DROP = "sleep_energy_drop"
# Whether the last cycle had something to learn, and the energy delta of the last one that had:
# the tuning alerts read cycle figures only from such cycles (an idle fleet exports zeros).
SLEEP_CYCLE_LEARNED = "sleep_cycle_learned"
SLEEP_LEARNED_ENERGY_DELTA = "sleep_learned_energy_delta"
SLEEP_SETTLE_LOOPS = "sleep_settle_loops"
SLEEP_EPISODES_PER_CYCLE = "sleep_episodes_per_cycle"
SLEEP_CYCLE_SECONDS = "sleep_cycle_seconds"
SLEEP_STABILITY = "sleep_stability"
SLEEP_GRAPH_VERSION = "sleep_graph_version"
SLEEP_GRAPH_EDGES = "sleep_graph_edges"
SLEEP_PROTOTYPES = "sleep_prototypes"
SLEEP_TUNING_CHANGES = "sleep_tuning_changes_total"
SLEEP_UNCONSOLIDATED = "sleep_vault_unconsolidated"

# Process start, for uptime and restart counting.
SERVICE_INFO = "tori_service_info"
