"""SleepScheduler adapters: the graph versions on disk (graph_store.py), the vault's gRPC client
(vault_client.py, an EpisodeSource) and the cross-replica consolidation lease in Redis
(lease.py)."""
