"""Config reload without a restart, for the tuning knobs.

A running service re-reads its configuration files when one of them changes (polled every
``config_reload.poll_interval_s``) or when the process gets SIGHUP. The new tree goes through the
same validation as at start; a change that fails it is refused, logged with the reason, counted,
and the running configuration stays as it was.

Only the tuning sections take effect live (:data:`LIVE_SECTIONS`): the SleepScheduler's, the
SparsePruner's and the KoopmanLearner's knobs. A change anywhere else (ports, backends, Redis) is
logged as needing a restart and keeps its running value, so a half-applied listener or storage
change can never happen. Every applied change is logged with its old and new value.

A service that wants to act on a change implements :class:`Reloadable`; the runner calls
``apply_settings`` on the event loop with the merged settings and the list of changes.
Environment variables are read as they were when the process started (a process cannot see its
parent's later environment), so a knob set by a variable changes only by editing the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from prometheus_client import CollectorRegistry, Counter

from mcp_services.common import metric_names as names
from mcp_services.common.config import ConfigError
from mcp_services.common.config_schema import Settings

log = structlog.get_logger(__name__)

LIVE_SECTIONS = ("sleep_scheduler", "sparse_pruner", "koopman_learner")


@dataclass(frozen=True)
class Change:
    """One key whose value differs between the running and the newly read configuration."""

    key: str
    old: Any
    new: Any
    live: bool


@runtime_checkable
class Reloadable(Protocol):
    """A service that applies tuning changes while running."""

    def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None: ...


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def diff_settings(old: Settings, new: Settings) -> list[Change]:
    """Every dotted key whose value differs, marked live when it is in a tuning section."""
    a = _flatten(old.model_dump())
    b = _flatten(new.model_dump())
    changes = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            live = key.split(".", 1)[0] in LIVE_SECTIONS
            changes.append(Change(key, a.get(key), b.get(key), live))
    return changes


def merge_live(old: Settings, new: Settings) -> Settings:
    """``old`` with the tuning sections taken from ``new``."""
    return old.model_copy(update={s: getattr(new, s) for s in LIVE_SECTIONS})


class ConfigReloader:
    """Watches the config files and applies tuning changes to a running service.

    Args:
        settings: the configuration the service started with.
        load: reads and validates the configuration again (raises ConfigError when invalid).
        files: the files whose change triggers a reload.
        on_apply: called with the merged settings and the changes when a reload took effect.
        registry: where ``tori_config_reloads_total{outcome}`` is registered.
    """

    def __init__(
        self,
        settings: Settings,
        load: Callable[[], Settings],
        files: Sequence[Path],
        on_apply: Callable[[Settings, Sequence[Change]], None],
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self._load = load
        self._files = list(files)
        self._on_apply = on_apply
        self._stamps = self._read_stamps()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._reloads = Counter(
            names.CONFIG_RELOADS.removesuffix("_total"),
            "Config reloads by outcome: applied, unchanged, refused (invalid), restart_needed.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("applied", "unchanged", "refused", "restart_needed"):
            self._reloads.labels(outcome)

    def _read_stamps(self) -> dict[Path, tuple[int, int] | None]:
        stamps: dict[Path, tuple[int, int] | None] = {}
        for path in self._files:
            try:
                st = path.stat()
                stamps[path] = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamps[path] = None
        return stamps

    async def reload(self, reason: str) -> list[Change]:
        """Re-read and apply; returns the live changes applied (empty when refused or none)."""
        async with self._lock:
            self._stamps = self._read_stamps()
            try:
                new = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                self._reloads.labels("refused").inc()
                log.error(
                    "config_reload_refused",
                    reason=reason,
                    error=str(exc),
                    action="the running configuration is unchanged; fix the file and save again",
                )
                return []
            changes = diff_settings(self.settings, new)
            held = [c for c in changes if not c.live]
            live = [c for c in changes if c.live]
            for c in held:
                log.warning("config_change_needs_restart", key=c.key, running=c.old, file=c.new)
            if held:
                self._reloads.labels("restart_needed").inc()
            if not live:
                if not held:
                    self._reloads.labels("unchanged").inc()
                return []
            merged = merge_live(self.settings, new)
            try:
                self._on_apply(merged, live)
            except Exception as exc:  # a service refusing a value keeps the old settings
                self._reloads.labels("refused").inc()
                log.error("config_reload_refused", reason=reason, error=str(exc))
                return []
            self.settings = merged
            for c in live:
                log.info("config_changed", key=c.key, old=c.old, new=c.new, reason=reason)
            self._reloads.labels("applied").inc()
            return live

    def changed_on_disk(self) -> bool:
        return self._read_stamps() != self._stamps

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.changed_on_disk():
                await self.reload("file changed")

    def start(self, poll_interval_s: float) -> None:
        """Start the file watch (when the interval is > 0) and the SIGHUP handler (main thread)."""
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        if poll_interval_s > 0:
            self._task = loop.create_task(self._watch(poll_interval_s))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
