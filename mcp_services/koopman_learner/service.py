"""The learner service of one namespace: what the servicer calls (rpc/servicer.Backend).

It owns the learner and its named streams, the single numerics worker every change runs on,
and what follows a change: the state saved (adapters/state_store.LearnerFiles, atomically, with
the cursor), the metrics exported and the events published (adapters/events.LearnerEvents).
When it follows the vault, its follower (adapters/follower.py, made by the server's wiring) feeds
it the vault's episodes. server.py builds one per namespace and hands it its adapters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import structlog

from mcp_services.common.config_schema import Settings, live_fields
from mcp_services.common.reload import Change, section_changes
from mcp_services.common.server import StartupError
from mcp_services.koopman_learner.adapters.events import LearnerEvents
from mcp_services.koopman_learner.adapters.state_store import LearnerFiles, StateError
from mcp_services.koopman_learner.domain.learner import (
    CouplingsOutcome,
    EpisodeActivity,
    Learner,
    UpdateResult,
)
from mcp_services.koopman_learner.domain.streams import StreamSet
from mcp_services.koopman_learner.metrics import KclMetrics
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig

# The keys a reload applies (declared Live in settings.py): every knob the learner reads from its
# KoopmanLearnerConfig, and max_batch_snapshots, which the service itself checks.
LIVE = live_fields(KoopmanLearnerConfig)
_SERVICE_LIVE = ("max_batch_snapshots",)
T = TypeVar("T")
log = structlog.get_logger(__name__)


class Follower(Protocol):
    """The vault follower as the service sees it (adapters/follower.VaultFollower)."""

    connected: bool
    vault_last_seq: int
    last_error: str

    def start(self) -> None: ...

    def wake(self) -> None: ...

    async def stop(self) -> None: ...


class Follow(Protocol):
    """Makes the follower that feeds a service: it reads the service's cursor, hands it the
    episodes after it, and skips it past a purged range."""

    def __call__(
        self,
        *,
        cursor: Callable[[], int],
        learn: Callable[[Sequence[EpisodeActivity]], Awaitable[None]],
        skip_to: Callable[[int], Awaitable[None]],
    ) -> Follower: ...


class LearnerService:
    """One namespace's learner, its worker and its adapters (see the module docstring)."""

    def __init__(
        self,
        cfg: KoopmanLearnerConfig,
        *,
        files: LearnerFiles,
        metrics: KclMetrics,
        events: LearnerEvents,
        follow: Follow | None,
    ) -> None:
        self.learner = Learner(cfg, stream_max_gap_s=cfg.stream_max_gap_s)
        self.streams = StreamSet(self.learner, cfg.stream_max_gap_s)
        self.max_batch_snapshots = cfg.max_batch_snapshots
        self.following_vault = follow is not None
        self.files = files
        self._metrics = metrics
        self._events = events
        self._follow = follow
        self._follower: Follower | None = None
        # One worker: updates are serialised, and numerics never run on the event loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kcl-numerics")
        self._last_published_version = -1

    async def start(self) -> None:
        """Load the saved state (StartupError naming the file if it cannot be read), then follow
        the vault from the restored cursor."""
        try:
            restored = await self.run(lambda: self.files.load(self.learner))
            await self.run(lambda: self.files.load_streams(self.streams))
        except StateError as exc:
            raise StartupError(f"koopman-learner: {exc}") from exc
        view = self.learner.view
        self._last_published_version = view.model_version
        self._metrics.set_knobs(self.learner.knobs, view.rank_in_force)
        self._metrics.set_view(view)
        log.info(
            "kcl_state_loaded" if restored else "kcl_state_new",
            path=str(self.files.path),
            cursor=view.cursor,
            modes=view.model.rank if view.model is not None else 0,
        )
        if self._follow is not None:
            self._follower = self._follow(
                cursor=lambda: self.learner.cursor, learn=self._learn, skip_to=self._skip_to
            )
            self._follower.start()

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
        self._executor.shutdown(wait=True)

    # -- config reload (common/reload.py) ------------------------------------------------------

    def live_settings(self) -> dict[str, Callable[[], object]]:
        """The keys declared Live on KoopmanLearnerConfig, each read where it is in force.

        Not live: dt_s and window_snapshots (they shape the stored state), follow_vault,
        vault_target, poll_interval_s and scan_batch (the follower and its channel), and
        stream_max_gap_s and data_dir (fixed when the learner and its state file open).
        """

        def knob(name: str) -> Callable[[], object]:
            return lambda: getattr(self.learner.knobs, name)

        readers = {f"koopman_learner.{name}": knob(name) for name in LIVE}
        readers["koopman_learner.max_batch_snapshots"] = lambda: self.max_batch_snapshots
        return readers

    async def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        """Config reload: the changed knobs take effect once any update in progress is done."""
        changed = section_changes(changes, "koopman_learner")
        if "max_batch_snapshots" in changed:
            self.max_batch_snapshots = settings.koopman_learner.max_batch_snapshots
        update = {k: v for k, v in changed.items() if k in LIVE and k not in _SERVICE_LIVE}
        if update:
            # On the worker, from the knobs in force there (UpdateConfig also sets them there).
            await self.run(lambda: self._apply_knobs(self.learner.knobs.model_copy(update=update)))

    # -- rpc/servicer.Backend ------------------------------------------------------------------

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def set_knobs(self, knobs: KoopmanLearnerConfig) -> None:
        # On the worker, so a knob never changes in the middle of an update.
        await self.run(lambda: self._apply_knobs(knobs))

    def _apply_knobs(self, knobs: KoopmanLearnerConfig) -> None:
        self.streams.set_knobs(knobs)
        self._metrics.set_knobs(knobs, self.learner.view.rank_in_force)
        log.info("kcl_knobs_changed", **knobs.model_dump())

    async def _learn(self, activity: Sequence[EpisodeActivity]) -> None:
        result, named = await self.run(lambda: self.streams.process_episodes(activity))
        for stream, update in named:
            await self.after_update(update, stream)
        await self.after_update(result)

    async def _skip_to(self, seq: int) -> None:
        def advance() -> None:
            self.learner.skip_to(seq)
            self.files.save(self.learner)

        await self.run(advance)

    async def after_update(self, result: UpdateResult, stream: str = "") -> None:
        if stream:
            # A named stream keeps its own file; metrics and events describe the default one.
            named = self.streams.named[stream]
            await self.run(lambda: self.files.save_stream(stream, named.learner, named.spec))
            return
        await self.run(lambda: self.files.save(self.learner))
        view = self.learner.view
        self._metrics.observe_update(result)
        self._metrics.set_view(view)
        if view.model is not None and view.model_version != self._last_published_version:
            self._last_published_version = view.model_version
            self._events.modes_updated(view)
        if result.couplings is not None:
            self._publish_couplings(result.couplings)

    async def after_couplings(self, outcome: CouplingsOutcome) -> None:
        await self.run(lambda: self.files.save(self.learner))
        if outcome.accepted:
            self._metrics.coupling_updates.inc()
        self._metrics.set_view(self.learner.view)
        self._publish_couplings(outcome)

    def _publish_couplings(self, outcome: CouplingsOutcome) -> None:
        if outcome.accepted and outcome.estimate is not None:
            self._events.couplings_updated(outcome.estimate)

    async def after_stream_reset(self, stream: str) -> None:
        await self.run(lambda: self.files.forget_stream(stream))

    async def after_reset(self) -> None:
        await self.run(lambda: self.files.save(self.learner))
        self._metrics.set_view(self.learner.view)
        self._last_published_version = self.learner.view.model_version
        if self._follower is not None:
            self._follower.wake()

    def vault_status(self) -> tuple[bool, int, str]:
        f = self._follower
        return (False, 0, "") if f is None else (f.connected, f.vault_last_seq, f.last_error)
