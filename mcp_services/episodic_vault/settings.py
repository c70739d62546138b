"""The vault's section of the configuration (``vault``) and its sub-sections, registered with the
loader. No key of it is live: every change needs a restart.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from mcp_services.common.config_schema import PositiveFloat, StrictModel, register_section


class VaultLimits(StrictModel):
    max_concepts: Annotated[int, Field(ge=1)] = 4096
    max_concept_id_len: Annotated[int, Field(ge=1)] = 256
    max_tags: Annotated[int, Field(ge=0)] = 32
    max_tag_len: Annotated[int, Field(ge=1)] = 128
    max_payload_bytes: Annotated[int, Field(ge=0)] = 1 << 20
    max_metadata_entries: Annotated[int, Field(ge=0)] = 64
    max_metadata_key_len: Annotated[int, Field(ge=1)] = 128
    max_metadata_value_len: Annotated[int, Field(ge=1)] = 4096
    max_trace_frames: Annotated[int, Field(ge=1)] = 256
    max_source_field_len: Annotated[int, Field(ge=1)] = 256
    # Clock skew tolerated on client timestamps.
    max_future_skew_s: Annotated[float, Field(ge=0)] = 300.0
    max_batch: Annotated[int, Field(ge=1)] = 10_000
    # A PutEpisodes stream waits on disk (episodic_vault/domain/spool.py) until the client
    # half-closes; these bound it: bytes one stream may send, and streams open at once. Over
    # either the call is refused with RESOURCE_EXHAUSTED and nothing of it is stored.
    max_stream_bytes: Annotated[int, Field(ge=1024)] = 256 << 20
    max_concurrent_streams: Annotated[int, Field(ge=1, le=1024)] = 8


class SqliteConfig(StrictModel):
    path: str = "var/data/vault.db"
    journal_mode: Literal["WAL", "DELETE", "TRUNCATE", "PERSIST"] = "WAL"
    # FULL: an acknowledged put survives power loss, not only a crash of the process.
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    cache_size_kb: Annotated[int, Field(ge=0)] = 65_536
    busy_timeout_ms: Annotated[int, Field(ge=0)] = 5_000
    # Reader connections (WAL lets them read while one writer writes).
    read_connections: Annotated[int, Field(ge=1, le=64)] = 4


class MemoryConfig(StrictModel):
    # Empty: nothing persists. Otherwise the store is saved here atomically every
    # snapshot_interval_s and on shutdown, and loaded at start; puts since the last snapshot are
    # lost if the process is killed, so this backend is for tests and tiny set-ups.
    snapshot_file: str = ""
    snapshot_interval_s: PositiveFloat = 30.0
    # Most episodes held (0: no limit); a put beyond it fails with RESOURCE_EXHAUSTED.
    capacity: Annotated[int, Field(ge=0)] = 0


class VaultRedisConfig(StrictModel):
    """The vault's own Redis backend (vault.backend: redis); not the event bus's top-level redis.

    An acknowledged put is as durable as the server's persistence makes it: run it with
    appendonly yes and appendfsync always for the contract's "durable on return".
    """

    # redis:// or rediss:// (TLS); a password in the URL wins over `password`.
    url: str = "redis://127.0.0.1:6379/0"
    password: str = ""
    # Every key the vault writes starts with this, so several vaults can share one Redis. On
    # Redis Cluster give it a {hash tag} (e.g. "{vault-a}:") so a put's keys share one slot.
    key_prefix: str = "tori:vault:"
    # Connections in the pool; a call waits up to pool_timeout_s for a free one.
    max_connections: Annotated[int, Field(ge=1, le=1024)] = 16
    pool_timeout_s: PositiveFloat = 5.0
    connect_timeout_s: PositiveFloat = 2.0
    # Longest wait for any one reply; a put of max_batch episodes must fit in it.
    socket_timeout_s: PositiveFloat = 10.0
    # Episodes read per round trip while listing, scanning and purging.
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 256
    # TLS (rediss:// only): CA bundle, client certificate and key for mutual TLS, verification.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_verify: bool = True

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        return v

    @field_validator("key_prefix")
    @classmethod
    def _prefix_nonempty(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty; e.g. 'tori:vault:' keeps the vault's keys apart")
        return v

    @model_validator(mode="after")
    def _tls_needs_rediss(self) -> VaultRedisConfig:
        tls = {"tls_ca_file": self.tls_ca_file, "tls_cert_file": self.tls_cert_file}
        tls |= {"tls_key_file": self.tls_key_file}
        set_keys = [k for k, v in tls.items() if v] + ([] if self.tls_verify else ["tls_verify"])
        if set_keys and not self.url.startswith("rediss://"):
            raise ValueError(
                f"vault.redis.{set_keys[0]} only applies to TLS connections; make vault.redis.url "
                "rediss://... or remove the TLS keys"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("vault.redis.tls_cert_file and tls_key_file go together; set both")
        return self


class VaultPostgresConfig(StrictModel):
    """The PostgreSQL backend (vault.backend: postgres)."""

    # libpq URL or key=value string; a password may also come from PGPASSWORD or a .pgpass file.
    dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    # The vault's tables live in this schema (created if missing), so vaults can share a database.
    schema_name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "tori_vault"
    pool_min_size: Annotated[int, Field(ge=0, le=1024)] = 1
    pool_max_size: Annotated[int, Field(ge=1, le=1024)] = 8
    # libpq counts whole seconds and treats less than 2 as 2.
    connect_timeout_s: PositiveFloat = 5.0
    # Longest wait for a free pooled connection before a call fails as unavailable.
    pool_timeout_s: PositiveFloat = 10.0
    # Server-side limit on any one statement (0: none).
    statement_timeout_ms: Annotated[int, Field(ge=0)] = 30_000
    # Ids looked up per query in a put, and rows deleted per transaction in a purge (a large
    # purge then never holds the write lock for long).
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500

    @model_validator(mode="after")
    def _pool_order(self) -> VaultPostgresConfig:
        if self.pool_max_size < self.pool_min_size:
            raise ValueError(
                f"vault.postgres.pool_max_size ({self.pool_max_size}) must be >= pool_min_size "
                f"({self.pool_min_size})"
            )
        return self


class StmTierConfig(StrictModel):
    """The hot in-process tier before the durable one; write-through: eviction loses nothing."""

    # Episodes held; 0 turns the tier off.
    capacity: Annotated[int, Field(ge=0, le=10_000_000)] = 10_000
    # Encoded bytes held at most (least recently used leave first); 0: no byte cap.
    max_bytes: Annotated[int, Field(ge=0)] = 256 << 20
    # An episode leaves STM (for MTM) this long after it was written.
    ttl_s: PositiveFloat = 3600.0


class DurableTierConfig(StrictModel):
    # Importance-based pruning deletes the least important episodes beyond this; 0: no limit.
    max_items: Annotated[int, Field(ge=0)] = 0


class TiersConfig(StrictModel):
    """STM -> MTM (vault.backend) -> LTM (consolidated episodes, same backend, plus the index)."""

    stm: StmTierConfig = StmTierConfig()
    mtm: DurableTierConfig = DurableTierConfig()
    ltm: DurableTierConfig = DurableTierConfig()
    # Importance = weighted sum of energy, ref_count, recency and access, each squashed to 0..1.
    weight_energy: Annotated[float, Field(ge=0)] = 0.35
    weight_ref_count: Annotated[float, Field(ge=0)] = 0.25
    weight_recency: Annotated[float, Field(ge=0)] = 0.25
    weight_access: Annotated[float, Field(ge=0)] = 0.15
    # Recency halves every this many hours since the episode was stored.
    recency_half_life_h: PositiveFloat = 24.0
    # How often tiers are checked against max_items and STM against its TTL.
    maintenance_interval_s: PositiveFloat = 30.0


class VaultIndexConfig(StrictModel):
    """The vector index (faiss HNSW, cosine) over embeddings; dimension is vault.embedding_dim."""

    enabled: bool = True
    # Where the index is persisted; empty: beside the data (next to the SQLite file or memory
    # snapshot; var/data/vault-index-<backend> for the server backends).
    dir: str = ""
    hnsw_m: Annotated[int, Field(ge=4, le=128)] = 32
    ef_construction: Annotated[int, Field(ge=8, le=4096)] = 64
    ef_search: Annotated[int, Field(ge=1, le=4096)] = 128
    # A filtered search with at most this many candidates is answered exactly (HNSW recall
    # falls when a filter leaves few reachable neighbours).
    exact_max_candidates: Annotated[int, Field(ge=0)] = 8192
    # The index is saved when it changed, this often and at shutdown.
    save_interval_s: PositiveFloat = 60.0
    # Threads faiss uses to build (searches run one per request).
    threads: Annotated[int, Field(ge=1, le=64)] = 1


class RecallConfig(StrictModel):
    # host:port of the SleepScheduler whose Complete expands cues. Empty: the fleet's own
    # scheduler (services.sleep_scheduler's dial address), so completion is on by default;
    # "off": no completion.
    scheduler_address: str = ""
    # Longest wait for Complete before Recall answers from the concept index alone.
    completion_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 250


class VaultConfig(StrictModel):
    backend: Literal["sqlite", "memory", "redis", "postgres"] = "sqlite"
    sqlite: SqliteConfig = SqliteConfig()
    memory: MemoryConfig = MemoryConfig()
    redis: VaultRedisConfig = VaultRedisConfig()
    postgres: VaultPostgresConfig = VaultPostgresConfig()
    limits: VaultLimits = VaultLimits()
    # Length of every embedding; 0 means the deployment stores none.
    embedding_dim: Annotated[int, Field(ge=0, le=65_536)] = 384
    ttl_hours: PositiveFloat = 48.0
    ttl_keep_ref_count: Annotated[int, Field(ge=1)] = 3
    # Threads running storage calls off the event loop.
    io_threads: Annotated[int, Field(ge=1, le=64)] = 4
    # Disk space the vault holds back (a file beside its SQLite file or snapshot) and gives up when
    # the disk is full, so DeleteEpisode and PurgeTTL can still run there (0: none).
    disk_reserve_bytes: Annotated[int, Field(ge=0)] = 4 << 20
    tiers: TiersConfig = TiersConfig()
    index: VaultIndexConfig = VaultIndexConfig()
    recall: RecallConfig = RecallConfig()


register_section("vault", VaultConfig, service="episodic_vault")
