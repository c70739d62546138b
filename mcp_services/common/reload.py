"""Config reload without a restart: a key is live only where the running service applies it.

A running service re-reads its configuration files when one of them changes (polled every
``config_reload.poll_interval_s``) or when the process gets SIGHUP. The new tree goes through the
same validation as at start; a file that fails it is refused, logged with the reason, counted,
and the running configuration stays as it was.

**A key is live because the service says so, and only if it took.** A service that applies
changes while it runs implements :class:`Reloadable`: ``live_settings()`` maps each dotted key it
applies (``"sleep_scheduler.t0"``) to a function that reads the value in force, and
``apply_settings`` applies changed keys. Each key that differs between the running and the new
configuration is then one of:

* **applied**: declared live, handed to ``apply_settings``, then read back from the service; it
  is logged ``config_changed`` and counted ``applied`` only once the service runs with the file's
  value. A declared key that did not take is logged ``config_change_not_applied`` (an error: the
  service broke its declaration) and reported like the next kind.
* **restart needed**: a key of a section the service reads but does not apply live (ports,
  backends, directories, a lease ttl). Logged ``config_change_needs_restart`` with the running
  and the file value, counted ``restart_needed``; the service keeps its running value, and the
  warning repeats at each reload until the process restarts or the file goes back.
* **not used**: a key of a section this service never reads (:func:`sections_of`): the vault's
  backend in the scheduler, the gateway's routes anywhere. Logged ``config_change_not_used``
  (info, key only); a reload that changes nothing else counts as ``unchanged``, since
  restarting this service would change nothing.

A reload changes only the keys that changed in the files, so a value set meanwhile by UpdateConfig
or auto-tune stays until its own key is edited. A key's values are masked in every log line when
they may carry a secret (common/secrets_mask.py). Environment variables are read as they were when
the process started (a process cannot see its parent's later environment), so a knob set by a
variable changes only by editing the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from prometheus_client import CollectorRegistry, Counter

from mcp_services.common import metric_names as names
from mcp_services.common.config import ConfigError, validate_tree
from mcp_services.common.config_schema import Settings, sections
from mcp_services.common.periodic import Periodic
from mcp_services.common.secrets_mask import mask_error, mask_secret
from mcp_services.common.tasks import Spawner

log = structlog.get_logger(__name__)

# Top-level sections every service reads, the ones config_schema.Settings declares itself: its
# endpoint and the others' (the client factory dials by name), the event bus, auth, gRPC options,
# logging, paths and the reload itself.
SHARED_SECTIONS = frozenset(Settings.model_fields)

LiveReaders = Mapping[str, Callable[[], object]]


def sections_of(endpoint_key: str) -> frozenset[str] | None:
    """The top-level sections the service ``services.<endpoint_key>`` reads: the shared ones and
    those registered for it (config_schema.register_section); None: none is, so all. No service
    reads ``fleet`` (the fleet CLI does) or ``gateway`` (the gateway reloads its own files:
    gateway/live.py)."""
    own = frozenset(s.name for s in sections().values() if s.service == endpoint_key)
    return SHARED_SECTIONS | own if own else None


@dataclass(frozen=True)
class Change:
    """One key whose value differs between the running and the newly read configuration."""

    key: str
    old: Any
    new: Any
    live: bool


@runtime_checkable
class Reloadable(Protocol):
    """A service that applies some keys while running, and says which."""

    def live_settings(self) -> LiveReaders:
        """Every dotted key applied live -> a function reading the value in force now."""
        ...

    async def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        """Apply ``changes`` (declared live keys only); raise to refuse them all.

        ``settings`` is the running configuration with these changes in it. Called on the
        event loop; the values must be in force when it returns.
        """
        ...


# ---- diffing -------------------------------------------------------------------------------


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def flat_keys(settings: Settings) -> dict[str, Any]:
    """Every leaf of ``settings`` by dotted key (``"sleep_scheduler.t0": 2.0``)."""
    return _flatten(settings.model_dump())


def diff_settings(old: Settings, new: Settings, live: Collection[str] = ()) -> list[Change]:
    """Every dotted key whose value differs, marked live when it is in ``live``."""
    a = flat_keys(old)
    b = flat_keys(new)
    return [
        Change(key, a.get(key), b.get(key), key in live)
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key)
    ]


def with_keys(base: Settings, source: Settings, keys: Collection[str]) -> Settings:
    """``base`` with the dotted ``keys`` taken from ``source``, validated as a whole.

    Raises:
        ConfigError: the mix is invalid (e.g. a new t0 below the t_min still in force).
    """
    tree = base.model_dump()
    values = flat_keys(source)
    for key in keys:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = values[key]
    return validate_tree(tree, "the live keys of the new files over the running configuration")


def section_changes(changes: Sequence[Change], section: str) -> dict[str, Any]:
    """The new values of the changed keys directly under ``section``: ``{"t0": 3.0}``."""
    prefix = section + "."
    return {
        c.key.removeprefix(prefix): c.new
        for c in changes
        if c.key.startswith(prefix) and "." not in c.key.removeprefix(prefix)
    }


class _Ignores:
    """A service that applies nothing live: every key it reads needs a restart."""

    def live_settings(self) -> LiveReaders:
        return {}

    async def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        raise AssertionError("unreachable: no key is declared live")


# ---- the reloader --------------------------------------------------------------------------


class ConfigReloader:
    """Watches the config files and applies the service's live keys to it while it runs.

    Args:
        settings: the configuration the service started with.
        load: reads and validates the configuration again (raises ConfigError when invalid).
        files: the files whose change triggers a reload.
        service: the running service; a :class:`Reloadable` one applies its declared keys.
        registry: where ``tori_config_reloads_total{outcome}`` is registered.
        sections: the top-level sections the service reads (:func:`sections_of`); None: all.

    Raises:
        ValueError: the service declares a key the schema does not have, or one whose reader
            disagrees with the configuration it started with (a wrong declaration fails at
            start, not at the first reload).
    """

    def __init__(
        self,
        settings: Settings,
        load: Callable[[], Settings],
        files: Sequence[Path],
        service: object,
        registry: CollectorRegistry,
        *,
        sections: Collection[str] | None = None,
    ) -> None:
        self.settings = settings
        self._load = load
        self._files = list(files)
        self._service: Reloadable = service if isinstance(service, Reloadable) else _Ignores()
        self._sections = None if sections is None else frozenset(sections)
        self._check_declaration()
        self._stamps = self._read_stamps()
        self._lock = asyncio.Lock()
        # The file watch and SIGHUP share one loop: a reload never runs twice at once.
        self._watch = Periodic("config-reload", self._reload_if_due, 0.0)
        self._sighup = False
        self._reloads = Counter(
            names.CONFIG_RELOADS.removesuffix("_total"),
            "Config reloads by outcome: applied (a live key now runs with the file's value), "
            "unchanged, refused (invalid), restart_needed (a key the service reads changed and "
            "applies only at start).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("applied", "unchanged", "refused", "restart_needed"):
            self._reloads.labels(outcome)

    def _check_declaration(self) -> None:
        flat = flat_keys(self.settings)
        for key, read in self._service.live_settings().items():
            if key not in flat:
                raise ValueError(f"live setting {key!r} is not a configuration key")
            if not self._uses(key):
                raise ValueError(f"live setting {key!r} is in a section this service never reads")
            running = read()
            if running != flat[key]:
                raise ValueError(
                    f"live setting {key!r} reads {running!r} from the service but the "
                    f"configuration says {flat[key]!r}: its reader reads the wrong value"
                )

    def _uses(self, key: str) -> bool:
        return self._sections is None or key.split(".", 1)[0] in self._sections

    @property
    def live_keys(self) -> frozenset[str]:
        """The keys this service applies without a restart."""
        return frozenset(self._service.live_settings())

    def _read_stamps(self) -> dict[Path, tuple[int, int] | None]:
        stamps: dict[Path, tuple[int, int] | None] = {}
        for path in self._files:
            try:
                st = path.stat()
                stamps[path] = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamps[path] = None
        return stamps

    def _refuse(self, reason: str, error: str) -> list[Change]:
        self._reloads.labels("refused").inc()
        log.error(
            "config_reload_refused",
            reason=reason,
            error=mask_error(error),
            action="the running configuration is unchanged; fix the file and save again",
        )
        return []

    async def reload(self, reason: str) -> list[Change]:
        """Re-read and apply; returns the changes now in force (empty when refused or none)."""
        async with self._lock:
            self._stamps = self._read_stamps()
            try:
                new = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                return self._refuse(reason, str(exc))
            readers = self._service.live_settings()
            changes = diff_settings(self.settings, new, readers.keys())
            for c in changes:
                if not self._uses(c.key):
                    log.info("config_change_not_used", key=c.key, reason=reason)
            used = [c for c in changes if self._uses(c.key)]
            live = [c for c in used if c.live]
            held = [c for c in used if not c.live]
            if not used:
                self._reloads.labels("unchanged").inc()
                return []
            applied: list[Change] = []
            if live:
                try:
                    merged = with_keys(self.settings, new, [c.key for c in live])
                    await self._service.apply_settings(merged, live)
                except Exception as exc:  # a service refusing a value keeps the old settings
                    self._refuse(reason, str(exc))
                    live = []
                applied = [c for c in live if readers[c.key]() == c.new]
                for c in live:
                    if c not in applied:
                        log.error(
                            "config_change_not_applied",
                            key=c.key,
                            running=mask_secret(c.key, readers[c.key]()),
                            file=mask_secret(c.key, c.new),
                            reason=reason,
                            action="declared live but still running the old value; restart "
                            "the service to apply it",
                        )
                        held.append(c)
                if applied and len(applied) == len(live):
                    self.settings = merged
                elif applied:
                    # The service broke its declaration for some keys: record what did take (if
                    # that mix is invalid, nothing, so the next reload tries them all again).
                    with contextlib.suppress(ConfigError):
                        self.settings = with_keys(self.settings, new, [c.key for c in applied])
            for c in applied:
                log.info(
                    "config_changed",
                    key=c.key,
                    old=mask_secret(c.key, c.old),
                    new=mask_secret(c.key, c.new),
                    reason=reason,
                )
            if applied:
                self._reloads.labels("applied").inc()
            for c in held:
                log.warning(
                    "config_change_needs_restart",
                    key=c.key,
                    running=mask_secret(c.key, c.old),
                    file=mask_secret(c.key, c.new),
                    reason=reason,
                )
            if held:
                self._reloads.labels("restart_needed").inc()
            return applied

    def changed_on_disk(self) -> bool:
        return self._read_stamps() != self._stamps

    async def _reload_if_due(self) -> None:
        if self._sighup:
            self._sighup = False
            await self.reload("SIGHUP")
        elif self.changed_on_disk():
            await self.reload("file changed")

    def _on_sighup(self) -> None:
        self._sighup = True
        self._watch.wake()

    def start(self, poll_interval_s: float, tasks: Spawner) -> None:
        """Start the file watch (every ``poll_interval_s``; 0: off) and the SIGHUP handler (main
        thread only), as one task of ``tasks``."""
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._watch.interval = poll_interval_s
        self._watch.start(tasks)

    async def stop(self) -> None:
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self._watch.stop()
