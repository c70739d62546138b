"""The configuration schema: every key, its type, range and default.

Values arrive as YAML scalars or interpolated strings ("50051"); pydantic coerces them to the
declared types. Unknown keys are rejected so a misspelt knob never silently does nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Port = Annotated[int, Field(ge=0, le=65535, description="TCP port; 0 picks a free one")]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Strict):
    # Where services keep data, logs and pid files; relative to the project root.
    var_dir: str = "var"


class LoggingConfig(_Strict):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class RedisConfig(_Strict):
    # Empty: no Redis; events are not published and the local fleet starts a private server.
    url: str = ""
    password: str = ""
    connect_timeout_s: PositiveFloat = 1.0
    # Reconnects back off exponentially from 0.1 s up to this.
    reconnect_backoff_max_s: PositiveFloat = 5.0
    # Events waiting while Redis is away; beyond it the oldest are dropped (and counted).
    publish_queue: Annotated[int, Field(ge=1)] = 10_000

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://, or be empty")
        return v


class GrpcConfig(_Strict):
    # Both directions; a larger request is refused with RESOURCE_EXHAUSTED before it is parsed.
    max_message_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 16 << 20
    # Connections are recycled after this age so clients re-resolve and load spreads (0: never).
    max_connection_age_ms: Annotated[int, Field(ge=0)] = 300_000
    max_connection_age_grace_ms: Annotated[int, Field(ge=0)] = 30_000
    keepalive_time_ms: Annotated[int, Field(ge=1000)] = 30_000
    keepalive_timeout_ms: Annotated[int, Field(ge=100)] = 10_000
    # SIGTERM: stop accepting, let in-flight calls finish for up to this long, then cancel them.
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 10.0
    # HTTP/2 BDP probing lets each incoming stream's flow-control window grow with the measured
    # bandwidth-delay product: faster over long links, but what a server buffers per stream is
    # then unbounded by us. Off: a fixed read-ahead per stream (see common/server.py).
    http2_bdp_probe: bool = False
    max_concurrent_rpcs: Annotated[int, Field(ge=0)] = 0


class AuthConfig(_Strict):
    # API keys accepted on every RPC but health; none configured means auth is off.
    api_keys: list[str] = []
    # A file with one key per line (blank lines and # comments ignored), e.g. /run/secrets/api_keys.
    api_keys_file: str = ""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        # The environment gives "k1,k2"; YAML may give a list.
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v


class Endpoint(_Strict):
    # Where the service listens (0.0.0.0: every interface).
    host: str = "127.0.0.1"
    port: Port
    # Where the others dial it (host:port): the compose service name in containers. Empty: the
    # listen host and port, a wildcard host read as loopback (mcp_services/common/clients.py).
    address: str = ""
    metrics_host: str = "127.0.0.1"
    metrics_port: Port

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        v = v.strip()
        if v:
            host, sep, port = v.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ValueError(
                    f"{v!r} is not host:port; give the address others dial, e.g. "
                    "episodic-vault:50051, or leave it empty to dial the listen host"
                )
        return v


class ServicesConfig(_Strict):
    episodic_vault: Endpoint
    sleep_scheduler: Endpoint
    sparse_pruner: Endpoint
    koopman_learner: Endpoint

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServicesConfig:
        seen: dict[int, str] = {}
        for name in type(self).model_fields:
            ep: Endpoint = getattr(self, name)
            for kind, port in (("port", ep.port), ("metrics_port", ep.metrics_port)):
                key = f"services.{name}.{kind}"
                if port and port in seen:
                    raise ValueError(
                        f"{key} and {seen[port]} are both {port}; give each its own port"
                    )
                seen[port] = key
        return self


class VaultLimits(_Strict):
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


class SqliteConfig(_Strict):
    path: str = "var/data/vault.db"
    journal_mode: Literal["WAL", "DELETE", "TRUNCATE", "PERSIST"] = "WAL"
    # FULL: an acknowledged put survives power loss, not only a crash of the process.
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    cache_size_kb: Annotated[int, Field(ge=0)] = 65_536
    busy_timeout_ms: Annotated[int, Field(ge=0)] = 5_000
    # Reader connections (WAL lets them read while one writer writes).
    read_connections: Annotated[int, Field(ge=1, le=64)] = 4


class MemoryConfig(_Strict):
    # Empty: nothing persists. Otherwise the store is saved here atomically every
    # snapshot_interval_s and on shutdown, and loaded at start; puts since the last snapshot are
    # lost if the process is killed, so this backend is for tests and tiny set-ups.
    snapshot_file: str = ""
    snapshot_interval_s: PositiveFloat = 30.0
    # Most episodes held (0: no limit); a put beyond it fails with RESOURCE_EXHAUSTED.
    capacity: Annotated[int, Field(ge=0)] = 0


class VaultRedisConfig(_Strict):
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


class VaultPostgresConfig(_Strict):
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


class StmTierConfig(_Strict):
    """The hot in-process tier before the durable one; write-through: eviction loses nothing."""

    # Episodes held; 0 turns the tier off.
    capacity: Annotated[int, Field(ge=0, le=10_000_000)] = 10_000
    # Encoded bytes held at most (least recently used leave first); 0: no byte cap.
    max_bytes: Annotated[int, Field(ge=0)] = 256 << 20
    # An episode leaves STM (for MTM) this long after it was written.
    ttl_s: PositiveFloat = 3600.0


class DurableTierConfig(_Strict):
    # Importance-based pruning deletes the least important episodes beyond this; 0: no limit.
    max_items: Annotated[int, Field(ge=0)] = 0


class TiersConfig(_Strict):
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


class VaultIndexConfig(_Strict):
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


class RecallConfig(_Strict):
    # host:port of the SleepScheduler whose Complete expands cues. Empty: the fleet's own
    # scheduler (services.sleep_scheduler's dial address), so completion is on by default;
    # "off": no completion.
    scheduler_address: str = ""
    # Longest wait for Complete before Recall answers from the concept index alone.
    completion_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 250


class VaultConfig(_Strict):
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


class SleepSchedulerConfig(_Strict):
    t0: PositiveFloat = 2.0
    eta: PositiveFloat = 0.01
    auto_tune: bool = False
    pressure_threshold: Annotated[int, Field(ge=0)] = 1000
    # Where graph versions are kept (empty: <paths.var_dir>/graphs), and how many versions.
    graph_dir: str = ""
    keep_versions: Annotated[int, Field(ge=1)] = 10
    # The annealing schedule: sleep epochs cool from t0 to t_min by temperature_decay each; the
    # settle-loop anneal cools by anneal_decay per sweep; at most max_epochs epochs per cycle.
    t_min: PositiveFloat = 0.3
    temperature_decay: Annotated[float, Field(gt=0, lt=1)] = 0.9
    anneal_decay: Annotated[float, Field(gt=0, lt=1)] = 0.85
    max_epochs: Annotated[int, Field(ge=1)] = 400
    # Episodes one cycle takes at most (oldest first).
    max_episodes: Annotated[int, Field(ge=1)] = 100_000
    # Weight factor per cycle of a rehearsed prototype no new episode joined (1: never fades);
    # below the support a prototype needs it is dropped (sleep_scheduler/domain/fading.py).
    fade: Annotated[float, Field(ge=0, le=1)] = 0.9
    # The cross-replica consolidation lease in Redis expires this long after its holder stops
    # renewing it (renewed every third of it).
    lease_ttl_s: Annotated[float, Field(ge=1)] = 30.0
    # Vault pressure is re-checked from the vault this often, so a lost episode.stored event
    # only delays a cycle (0: only events).
    pressure_poll_s: Annotated[float, Field(ge=0)] = 30.0
    # A recurring consolidation: a 5-field cron expression (UTC) or an interval (0: none).
    schedule_cron: str = ""
    schedule_every_s: Annotated[float, Field(ge=0)] = 0.0
    # CommitGraph streams (the pruner's commits): a graph is held in memory until its stream
    # ends, so bytes per stream and streams open at once are capped (RESOURCE_EXHAUSTED beyond).
    max_stream_bytes: Annotated[int, Field(ge=1024)] = 1 << 30
    max_concurrent_streams: Annotated[int, Field(ge=1, le=1024)] = 4
    # Deadline of the vault Scan a cycle reads its episodes with (up to max_episodes of them);
    # beyond it the cycle fails naming this key instead of waiting on a stalled vault forever.
    vault_scan_timeout_s: PositiveFloat = 300.0

    @model_validator(mode="after")
    def _temperatures(self) -> SleepSchedulerConfig:
        if self.t_min > self.t0:
            raise ValueError(f"t_min ({self.t_min}) must be <= t0 ({self.t0})")
        if self.schedule_cron and self.schedule_every_s:
            raise ValueError("set schedule_cron or schedule_every_s, not both")
        return self


class SparsePrunerConfig(_Strict):
    # L1 strength in units of lambda_max / 100 (lam = 100 * tau * lambda_max): the guide's 0.001
    # is 0.1 lambda_max, and 0.01 already prunes every edge by L1. See sparse_pruner/knobs.py.
    tau: Annotated[float, Field(gt=0, le=0.01)] = 0.001
    # Edges below this fraction of the RMS nonzero weight are dropped after the L1 solve.
    l1_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.01
    max_quality_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    auto_tune: bool = False
    # One run keeps at least this fraction of the edges and removes at most this many (0: no cap).
    retention_target: Annotated[float, Field(ge=0, le=1)] = 0.1
    max_edges_to_prune: Annotated[int, Field(ge=0)] = 0
    # Times the guard halves tau before refusing.
    max_backoffs: Annotated[int, Field(ge=0, le=20)] = 6
    # Backups of replaced versions kept (empty backup_dir: <paths.var_dir>/pruner/backups).
    backup_dir: str = ""
    backup_retention: Annotated[int, Field(ge=1)] = 10
    # Triggers: every consolidation.completed event, and a schedule (0: off).
    trigger_on_consolidation: bool = True
    schedule_interval_s: Annotated[float, Field(ge=0)] = 0.0
    schedule_dry_run: bool = False
    # Re-read and recompute this many times on a version conflict before the job fails.
    max_conflict_retries: Annotated[int, Field(ge=0)] = 3
    # Deadline of each call to the SleepScheduler.
    scheduler_timeout_s: PositiveFloat = 60.0
    # Weekly growth needs versions at least this far apart; the rule fires at most once per
    # cooldown (the operators' rule is weekly).
    growth_min_window_s: Annotated[float, Field(ge=0)] = 86_400.0
    auto_tune_cooldown_s: Annotated[float, Field(ge=0)] = 604_800.0


class KoopmanLearnerConfig(_Strict):
    rank: Annotated[int, Field(ge=1)] = 50
    rank_high: Annotated[int, Field(ge=1)] = 75
    psi_drift_threshold: PositiveFloat = 0.2
    # Scale-free: 0 keeps every mode, 1 none (see koopman_learner/domain/spdmd.py).
    l1_strength: Annotated[float, Field(ge=0, le=1)] = 0.01
    forgetting_factor: Annotated[float, Field(gt=0, le=1)] = 0.98
    max_modes: Annotated[int, Field(ge=1)] = 100
    auto_tune: bool = False
    # Sampling interval of the activation stream (s); episode frames are resampled onto it.
    dt_s: PositiveFloat = 0.1
    # Learn from the vault (Scan cursor, episode.stored as trigger); off: explicit traces only.
    follow_vault: bool = True
    # host:port of the vault when it differs from the fleet's; empty: services.episodic_vault's
    # dial address (mcp_services/common/clients.py).
    vault_target: str = ""
    # Re-check the vault this often even when no event arrives (a lost event only delays).
    poll_interval_s: PositiveFloat = 5.0
    scan_batch: Annotated[int, Field(ge=1, le=100_000)] = 500
    # Activation-only episodes of one source further apart than this start a new trajectory.
    stream_max_gap_s: PositiveFloat = 1.0
    # Snapshots kept for refits (oldest traces leave first).
    window_snapshots: Annotated[int, Field(ge=10)] = 4000
    # Online updates (snapshot pairs) between full refits.
    refit_interval: Annotated[int, Field(ge=1)] = 2000
    # Concepts one fit may cover, and snapshots one ProcessActivationBatch may carry.
    max_concepts: Annotated[int, Field(ge=2)] = 2048
    max_batch_snapshots: Annotated[int, Field(ge=2)] = 100_000
    # Re-estimate the oscillator couplings after every refit (UpdateOscillatorCouplings always).
    auto_couplings: bool = True
    # Weigh refits by forgetting_factor as the online updates are (off: every pair in the
    # window weighs alike; online updates always discount).
    weight_refits: bool = False
    # A mode keeping less than this share of its amplitude on average over the window is not
    # significant and left out of the mode summaries by default (koopman_learner/domain/modes.py).
    min_persistence: Annotated[float, Field(ge=0, le=1)] = 0.2
    # Largest delay embedding of a named stream, and how many named streams may exist.
    max_delays: Annotated[int, Field(ge=1, le=1024)] = 200
    max_streams: Annotated[int, Field(ge=0)] = 64
    # Modes, couplings, window and cursor; empty: <paths.var_dir>/data/koopman.
    data_dir: str = ""

    @model_validator(mode="after")
    def _rank_order(self) -> KoopmanLearnerConfig:
        if self.rank_high < self.rank:
            raise ValueError(f"rank_high ({self.rank_high}) must be >= rank ({self.rank})")
        return self


class GatewayRoute(_Strict):
    """One route's service addresses as host:port; empty means the address under services."""

    episodic_vault: str = ""
    sleep_scheduler: str = ""
    sparse_pruner: str = ""
    koopman_learner: str = ""

    @field_validator("episodic_vault", "sleep_scheduler", "sparse_pruner", "koopman_learner")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if v and (not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535):
            raise ValueError("must be host:port (e.g. 10.0.0.7:50051), or empty for the primary")
        return v


class GatewayDeadlines(_Strict):
    """Longest wait, in seconds, for the service call behind each tool (retries included)."""

    put_s: PositiveFloat = 5.0
    get_s: PositiveFloat = 5.0
    search_s: PositiveFloat = 10.0
    recall_s: PositiveFloat = 10.0
    # A sleep cycle run with {once: true} waits for the whole consolidation.
    sleep_s: PositiveFloat = 300.0
    prune_s: PositiveFloat = 300.0
    kcl_s: PositiveFloat = 10.0
    stats_s: PositiveFloat = 5.0


class GatewayConfig(_Strict):
    """The MCP gateway (mcp_services/gateway): transport, API keys, canary routing, deadlines."""

    host: str = "127.0.0.1"
    port: Port = 8765
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/-]*$")] = "/mcp"
    metrics_host: str = "127.0.0.1"
    metrics_port: Port = 9095
    # dotted: memory.put ...; underscore: memory_put ... (clients that reject dots); both.
    tool_names: Literal["dotted", "underscore", "both"] = "dotted"
    # With no key configured: true refuses to start, false lets anonymous callers in (loopback
    # development only). With keys configured every HTTP call needs one.
    auth_required: bool = True
    # Entries "KEY" or "KEY TENANT"; the environment gives them comma-separated.
    api_keys: list[str] = []
    # One entry a line as above; "revoked KEY" refuses a key; blank lines and # comments skipped.
    # Re-read when it changes, so adding or revoking a key needs no restart.
    api_keys_file: str = ""
    # The key a stdio session acts with (it names the caller for routing; checked like HTTP's).
    stdio_api_key: str = ""
    # Share of callers (0-100) sent to the canary route, sticky per tenant or key.
    canary_percent: Annotated[float, Field(ge=0, le=100)] = 0.0
    canary: GatewayRoute = GatewayRoute()
    # A YAML mapping of keys of this section (e.g. "canary_percent: 50") merged over it and
    # re-read when it changes: how routing changes without a restart. Empty: none.
    runtime_file: str = ""
    # How often the key file and runtime file are checked for changes (SIGHUP also reloads).
    reload_interval_s: Annotated[float, Field(gt=0)] = 2.0
    deadlines: GatewayDeadlines = GatewayDeadlines()
    # Attempts for idempotent calls that fail with UNAVAILABLE (1: no retry).
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    retry_backoff_s: Annotated[float, Field(ge=0)] = 0.05
    # Episodes one memory.put call may carry in `episodes`.
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = 1000
    # HTTP: a request's head (request line and headers) must arrive within header_timeout_s of
    # the connection opening or the previous response; an idle keep-alive connection closes
    # after keep_alive_timeout_s; past max_connections open connections (or requests in
    # flight) a request gets 503 (0: no cap).
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    keep_alive_timeout_s: Annotated[int, Field(ge=1, le=600)] = 5
    max_connections: Annotated[int, Field(ge=0)] = 1000

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v


class FleetConfig(_Strict):
    # Port of the private Redis the local fleet starts when redis.url is empty.
    redis_port: Port = 6380
    # How long `make up` waits for each service to report SERVING.
    start_timeout_s: PositiveFloat = 60.0


class ConfigReloadConfig(_Strict):
    # The config files are re-read when they change (checked this often) or on SIGHUP; 0 turns
    # the file watch off (SIGHUP still reloads). Only the keys a service declares live take
    # effect without a restart: see mcp_services/common/reload.py.
    poll_interval_s: Annotated[float, Field(ge=0)] = 2.0


class Settings(_Strict):
    environment: str = "local"
    paths: PathsConfig = PathsConfig()
    logging: LoggingConfig = LoggingConfig()
    redis: RedisConfig = RedisConfig()
    grpc: GrpcConfig = GrpcConfig()
    auth: AuthConfig = AuthConfig()
    services: ServicesConfig
    vault: VaultConfig = VaultConfig()
    sleep_scheduler: SleepSchedulerConfig = SleepSchedulerConfig()
    sparse_pruner: SparsePrunerConfig = SparsePrunerConfig()
    koopman_learner: KoopmanLearnerConfig = KoopmanLearnerConfig()
    fleet: FleetConfig = FleetConfig()
    gateway: GatewayConfig = GatewayConfig()
    config_reload: ConfigReloadConfig = ConfigReloadConfig()
