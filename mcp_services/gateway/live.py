"""The gateway's configuration that changes while it runs: keys, canary routing, deadlines.

The gateway section of the config files is read once at start. Over it goes gateway.runtime_file
(a YAML mapping of LIVE_KEYS, e.g. `canary_percent: 50`), and beside it the key file. Both files
are checked every gateway.reload_interval_s and on SIGHUP; a change is validated as a whole and
either applied at once (the next call sees it) or refused with the reason logged and counted,
leaving the running configuration as it was. Ports, paths and tool names need a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from mcp_services.common.config import ConfigError, deep_merge, format_validation_error
from mcp_services.common.config_schema import Settings
from mcp_services.common.periodic import Periodic
from mcp_services.common.tasks import Spawner
from mcp_services.gateway.keys import KeyConfigError, KeyStore, load_keys
from mcp_services.gateway.metrics import GatewayMetrics
from mcp_services.gateway.routing import Route, Targets, targets_for
from mcp_services.gateway.settings import GatewayConfig

log = structlog.get_logger(__name__)

# Keys of the gateway section the runtime file may set.
LIVE_KEYS = frozenset(
    {
        "canary_percent", "canary", "deadlines", "max_attempts", "retry_backoff_s", "max_batch",
        "api_keys",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """Everything a call reads, swapped as one object so a call never sees half a reload."""

    cfg: GatewayConfig
    keys: KeyStore
    targets: dict[Route, Targets]


def read_runtime_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping such as 'canary_percent: 50'")
    unknown = sorted(set(data) - LIVE_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: {', '.join(unknown)} cannot change while the gateway runs; the file takes "
            f"{', '.join(sorted(LIVE_KEYS))}. Set the others in config/ and restart"
        )
    return data


def build_snapshot(settings: Settings) -> Snapshot:
    """The gateway section with the runtime file over it, and the keys. Raises ConfigError."""
    base = settings.gateway
    overlay: Mapping[str, Any] = {}
    if base.runtime_file:
        overlay = read_runtime_file(Path(base.runtime_file))
    try:
        cfg = GatewayConfig.model_validate(deep_merge(base.model_dump(), overlay))
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, base.runtime_file or "the config files")
        ) from None
    try:
        keys = load_keys(cfg, missing_file_ok=not cfg.auth_required)
    except KeyConfigError as exc:
        raise ConfigError(str(exc)) from None
    if keys.empty and cfg.auth_required:
        raise ConfigError(
            "gateway: no API key is configured and gateway.auth_required is true; run `make "
            "generate-secret-key` (or set GATEWAY_API_KEYS / GATEWAY_API_KEYS_FILE), or set "
            "GATEWAY_AUTH_REQUIRED=false to let anonymous callers in on a private network"
        )
    return Snapshot(cfg=cfg, keys=keys, targets=targets_for(cfg, settings.services))


def _stamp(path: str) -> tuple[float, int, int] | None:
    if not path:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size, st.st_ino)


class LiveConfig:
    """Holds the current Snapshot and replaces it when the watched files change."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self._metrics = metrics
        self.current = build_snapshot(settings)  # a bad start is an error, not a fallback
        self._stamps = self._read_stamps()
        self._publish()
        self._watch = Periodic("gateway-config-watch", self._reload_if_changed, 0.0)
        self.on_change: list[Any] = []

    def _files(self) -> list[str]:
        g = self.settings.gateway
        return [g.runtime_file, self.current.cfg.api_keys_file]

    def _read_stamps(self) -> list[tuple[float, int, int] | None]:
        return [_stamp(p) for p in self._files()]

    def _publish(self) -> None:
        self._metrics.canary_percent.set(self.current.cfg.canary_percent)
        self._metrics.keys_loaded.set(len(self.current.keys.callers))

    def reload(self) -> bool:
        """Re-read the files now; True when the new configuration took effect."""
        self._stamps = self._read_stamps()
        try:
            snap = build_snapshot(self.settings)
        except ConfigError as exc:
            self._metrics.reloads.labels("refused").inc()
            log.error("gateway_reload_refused", error=str(exc), kept="the running configuration")
            return False
        old = self.current
        self.current = snap
        self._stamps = self._read_stamps()
        self._publish()
        self._metrics.reloads.labels("applied").inc()
        log.info(
            "gateway_reloaded",
            canary_percent=snap.cfg.canary_percent,
            was=old.cfg.canary_percent,
            keys=len(snap.keys.callers),
            revoked=len(snap.keys.revoked),
        )
        for hook in self.on_change:
            hook(snap)
        return True

    def changed(self) -> bool:
        return self._read_stamps() != self._stamps

    async def _reload_if_changed(self) -> None:
        if self.changed():
            self.reload()

    def start(self, tasks: Spawner) -> None:
        """Watch the files as a task of ``tasks`` (and reload on SIGHUP where signals allow)."""
        loop = asyncio.get_running_loop()
        self._watch.interval = self.current.cfg.reload_interval_s
        self._watch.start(tasks)
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                loop.add_signal_handler(signal.SIGHUP, self.reload)

    async def stop(self) -> None:
        await self._watch.stop()
