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

# Process start, for uptime and restart counting.
SERVICE_INFO = "tori_service_info"
