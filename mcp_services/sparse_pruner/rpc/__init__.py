"""SparsePruner gRPC surface: the servicer (requests -> engine calls, jobs and backups -> protos,
errors -> status codes)."""
