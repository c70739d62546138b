"""SparsePruner adapters: the SleepScheduler's gRPC client (scheduler_client.py, a
:class:`~mcp_services.sparse_pruner.domain.ports.GraphSource`) and the backup files
(backups.py)."""
