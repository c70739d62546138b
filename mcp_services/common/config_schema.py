"""The configuration schema: the shared sections, and the registry every service's section joins.

Values arrive as YAML scalars or interpolated strings ("50051"); pydantic coerces them to the
declared types. Unknown keys are rejected so a misspelt knob never silently does nothing.

Each service owns its section's model (``mcp_services/<service>/settings.py``) and registers it
with :func:`register_section`; :func:`settings_model` assembles the whole :class:`Settings` from
the shared sections declared here and the registered ones, so a new service adds its section
without editing this package; a service beyond the four built-in endpoints adds its own
``services.<key>`` with :func:`register_endpoint`. The built-in services register in
``mcp_services/settings_registry``, which :func:`settings_model` imports the first time it is
called (this package never imports a service at module level).

A key a running service applies without a restart is declared on its model with the :data:`Live`
marker (``t0: Annotated[PositiveFloat, Live] = 2.0``); :func:`live_keys` lists them, and each
service's ``live_settings()`` (common/reload.py) is derived from that list.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from mcp_services.common.errors import InputError

if TYPE_CHECKING:  # the built-in sections' types, for the checker only (see Settings)
    from mcp_services.episodic_vault.settings import VaultConfig
    from mcp_services.fleet.settings import FleetConfig
    from mcp_services.gateway.settings import GatewayConfig
    from mcp_services.koopman_learner.settings import KoopmanLearnerConfig
    from mcp_services.sleep_scheduler.settings import SleepSchedulerConfig
    from mcp_services.sparse_pruner.settings import SparsePrunerConfig

Port = Annotated[int, Field(ge=0, le=65535, description="TCP port; 0 picks a free one")]
PositiveFloat = Annotated[float, Field(gt=0)]


class StrictModel(BaseModel):
    """Every config model: frozen, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(StrictModel):
    # Where services keep data, logs and pid files; relative to the project root.
    var_dir: str = "var"


class LoggingConfig(StrictModel):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class RedisConfig(StrictModel):
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


class GrpcConfig(StrictModel):
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


class AuthConfig(StrictModel):
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


class Endpoint(StrictModel):
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


class ServicesConfig(StrictModel):
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


class ConfigReloadConfig(StrictModel):
    # The config files are re-read when they change (checked this often) or on SIGHUP; 0 turns
    # the file watch off (SIGHUP still reloads). Only the keys a service declares live take
    # effect without a restart: see mcp_services/common/reload.py.
    poll_interval_s: Annotated[float, Field(ge=0)] = 2.0


# ---- live fields ---------------------------------------------------------------------------


class _LiveMarker:
    """Annotated metadata marking a field a running service applies without a restart."""

    def __repr__(self) -> str:
        return "Live"


Live = _LiveMarker()


def live_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` declared :data:`Live`, in declaration order."""
    return tuple(name for name, f in model.model_fields.items() if Live in f.metadata)


def live_keys(model: type[BaseModel], prefix: str) -> tuple[str, ...]:
    """The dotted keys of every :data:`Live` field under ``prefix`` (``"sleep_scheduler.t0"``),
    sub-models included."""
    keys = [f"{prefix}.{name}" for name in live_fields(model)]
    for name, f in model.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            keys.extend(live_keys(f.annotation, f"{prefix}.{name}"))
    return tuple(keys)


# ---- knobs: a section's model, changed by name ----------------------------------------------


class SettingError(InputError):
    """A setting changed by name (UpdateConfig, a per-run option) is unknown or out of range; the
    message names it and says what is allowed."""


M = TypeVar("M", bound=BaseModel)


def updated(
    model: M,
    changes: Mapping[str, object],
    allowed: Collection[str],
    what: str,
    error: type[SettingError] = SettingError,
) -> M:
    """``model`` with ``changes`` applied and validated as a whole; nothing changes if one is bad.

    Raises:
        SettingError: (or ``error``) a name not in ``allowed`` ("['x']: not a <what>"), or a
            value out of range ("tau: must be in (0, 0.01] (units of lambda_max/100), got 0.02").
    """
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise error(f"{unknown}: not a {what}")
    try:
        return type(model).model_validate(model.model_dump() | dict(changes))
    except ValidationError as exc:
        raise error(describe_error(type(model), exc)) from None


def describe_error(model: type[BaseModel], exc: ValidationError) -> str:
    """The first problem of ``exc`` as "<field>: must be <range> (<description>), got <value>"."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = model.model_fields.get(str(err["loc"][0])) if len(err["loc"]) == 1 else None
    expected = _range_of(field.metadata) if field is not None else ""
    if not expected:
        msg = str(err["msg"]).removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    note = f" ({field.description})" if field is not None and field.description else ""
    return f"{loc}: must be {expected}{note}, got {err.get('input')!r}"


def _range_of(metadata: list[Any]) -> str:
    lo: tuple[str, object] | None = next((("(", m.gt) for m in metadata if isinstance(m, Gt)), None)
    lo = lo or next((("[", m.ge) for m in metadata if isinstance(m, Ge)), None)
    hi: tuple[str, object] | None = next(((")", m.lt) for m in metadata if isinstance(m, Lt)), None)
    hi = hi or next((("]", m.le) for m in metadata if isinstance(m, Le)), None)
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {lo[1]}"
    if hi:
        return f"{'<' if hi[0] == ')' else '<='} {hi[1]}"
    return ""


# ---- the sections and the whole ------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A registered top-level section: its key, its model, and the service that reads it."""

    name: str
    model: type[BaseModel]
    # The services.<key> whose process reads this section (common/reload.py sections_of); None:
    # no one service (the gateway's and the fleet's own sections).
    service: str | None


_sections: dict[str, Section] = {}
# services.<key> of the services beyond the built-in four (register_endpoint).
_endpoints: list[str] = []
_built: type[Settings] | None = None
_builtins_loaded = False


def register_section(name: str, model: type[BaseModel], *, service: str | None = None) -> None:
    """Add the top-level section ``name`` (validated by ``model``) to :class:`Settings`.

    Raises:
        ValueError: ``name`` is a shared section or already registered.
    """
    global _built
    _load_builtins()
    if name in Settings.model_fields or name in _sections:
        owner = _sections[name].model.__module__ if name in _sections else __name__
        raise ValueError(
            f"config section {name!r} is already registered (by {owner}); give the new "
            "section another name"
        )
    _sections[name] = Section(name, model, service)
    _built = None


def register_endpoint(key: str) -> None:
    """Add ``services.<key>`` (an :class:`Endpoint`, required like the built-in four's) for a
    service beyond them, from its own module before the configuration is loaded.

    Raises:
        ValueError: ``services.<key>`` already exists.
    """
    global _built
    if key in ServicesConfig.model_fields or key in _endpoints:
        raise ValueError(f"services.{key} is already an endpoint; give the new service another key")
    _endpoints.append(key)
    _built = None


def sections() -> Mapping[str, Section]:
    """Every registered section by name, the built-in ones included."""
    _load_builtins()
    return dict(_sections)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        # The one place common reaches the services: their settings modules register themselves.
        import mcp_services.settings_registry  # noqa: F401


class Settings(StrictModel):
    """The whole configuration: the shared sections, then each registered service section.

    Validate a tree with :func:`settings_model` (common/config.py does): that model is this class
    with the registered sections added. The block below only tells the type checker the built-in
    sections' types; a section registered elsewhere is read with :func:`section_of`.
    """

    environment: str = "local"
    paths: PathsConfig = PathsConfig()
    logging: LoggingConfig = LoggingConfig()
    redis: RedisConfig = RedisConfig()
    grpc: GrpcConfig = GrpcConfig()
    auth: AuthConfig = AuthConfig()
    services: ServicesConfig
    config_reload: ConfigReloadConfig = ConfigReloadConfig()

    if TYPE_CHECKING:
        vault: VaultConfig
        sleep_scheduler: SleepSchedulerConfig
        sparse_pruner: SparsePrunerConfig
        koopman_learner: KoopmanLearnerConfig
        fleet: FleetConfig
        gateway: GatewayConfig


def settings_model() -> type[Settings]:
    """:class:`Settings` with every registered section (each defaults to its model's defaults)."""
    global _built
    _load_builtins()
    if _built is None:
        # By name, so the order never depends on which service's module was imported first.
        fields: dict[str, Any] = {
            name: (s.model, s.model()) for name, s in sorted(_sections.items())
        }
        if _endpoints:
            endpoints: dict[str, Any] = {key: (Endpoint, ...) for key in sorted(_endpoints)}
            services = create_model(
                "ServicesConfig", __base__=ServicesConfig, __module__=__name__, **endpoints
            )
            fields["services"] = (services, ...)
        _built = create_model("Settings", __base__=Settings, __module__=__name__, **fields)
    return _built


def section_of(settings: Settings, model: type[M]) -> M:
    """The section of ``settings`` validated by ``model`` (for a section registered outside the
    built-in ones, which the type checker does not know as an attribute)."""
    for s in sections().values():
        if s.model is model:
            value = getattr(settings, s.name)
            assert isinstance(value, model)
            return value
    raise KeyError(f"no config section is registered with {model.__name__}")
