"""EpisodicVault adapters: the storage backends (SQLite, Redis, PostgreSQL, memory) behind the
domain's VaultBackend contract, their stored body encoding, and the client of the scheduler's
cue completion."""
