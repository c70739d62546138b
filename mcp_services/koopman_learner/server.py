"""KoopmanLearner server:
`python -m mcp_services.koopman_learner.server` (gRPC 50054, metrics 9094).

Owns the learner, its single numerics worker, the state file and the vault follower. After each
change it saves the state (atomically, with the cursor), exports the metrics and publishes
`tori.memory.kcl.modes.updated` / `tori.memory.kcl.couplings.updated`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
import structlog

from mcp_services.common.clients import ClientFactory, dial_address
from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import Settings, live_fields
from mcp_services.common.event_bus import (
    KCL_COUPLINGS_UPDATED,
    KCL_MODES_UPDATED,
    new_header,
)
from mcp_services.common.namespaces import DEFAULT, NamespaceUnits, add_scoped_servicer
from mcp_services.common.reload import Change, section_changes
from mcp_services.common.server import Context, StartupError, run
from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.gen.tori.koopman.v1 import koopman_pb2, koopman_pb2_grpc
from mcp_services.koopman_learner import codec, state_store
from mcp_services.koopman_learner.follower import VaultFollower
from mcp_services.koopman_learner.learner import CouplingsOutcome, Learner, UpdateResult
from mcp_services.koopman_learner.metrics import KclMetrics
from mcp_services.koopman_learner.namespaces import LearnerUnit, learner_units
from mcp_services.koopman_learner.servicer import Backend, KoopmanLearnerServicer
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig
from mcp_services.koopman_learner.streams import StreamSet, StreamSpec

SERVICE_NAME = koopman_pb2.DESCRIPTOR.services_by_name["KoopmanLearner"].full_name
# The keys a reload applies (declared Live in settings.py): every knob the learner reads from its
# KoopmanLearnerConfig, and max_batch_snapshots, which the service itself checks.
LIVE = live_fields(KoopmanLearnerConfig)
_SERVICE_LIVE = ("max_batch_snapshots",)
SOURCE = "koopman-learner"
T = TypeVar("T")
log = structlog.get_logger(__name__)


def vault_target(settings: Settings) -> str:
    """koopman_learner.vault_target, else the vault's dial address."""
    return settings.koopman_learner.vault_target or dial_address(settings, "episodic_vault")


def data_dir(settings: Settings) -> Path:
    cfg = settings.koopman_learner
    # Relative paths are relative to the project, as for every data path (resolve_path).
    return resolve_path(cfg.data_dir or Path(settings.paths.var_dir) / "data" / "koopman")


class KoopmanLearnerService(Backend):
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context, namespace: str = DEFAULT) -> None:
        self._ctx = ctx
        # The namespace whose episodes this learner follows (another's unit: namespaces.py).
        self._namespace = namespace
        self._units: NamespaceUnits[LearnerUnit] | None = None
        cfg = ctx.settings.koopman_learner
        self._cfg = cfg
        self.learner = Learner(cfg, stream_max_gap_s=cfg.stream_max_gap_s)
        self.streams = StreamSet(self.learner, cfg.stream_max_gap_s)
        self.max_batch_snapshots = cfg.max_batch_snapshots
        self.following_vault = cfg.follow_vault
        self._dir = data_dir(ctx.settings)
        self._path = self._dir / state_store.FILE_NAME
        # One worker: updates are serialised, and numerics never run on the event loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kcl-numerics")
        self._metrics = KclMetrics(ctx.registry)
        self._follower: VaultFollower | None = None
        self._last_published_version = -1

    # -- Service -------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            restored = await self.run(lambda: state_store.load(self._path, self.learner))
            await self.run(self._load_streams)
        except state_store.StateError as exc:
            raise StartupError(f"koopman-learner: {exc}") from exc
        view = self.learner.view
        self._last_published_version = view.model_version
        self._metrics.set_knobs(self.learner.knobs, view.rank_in_force)
        self._metrics.set_view(view)
        log.info(
            "kcl_state_loaded" if restored else "kcl_state_new",
            path=str(self._path),
            cursor=view.cursor,
            modes=view.model.rank if view.model is not None else 0,
        )
        if self._cfg.follow_vault:
            clients = ClientFactory.of(self._ctx.settings)
            self._follower = VaultFollower(
                vault_target(self._ctx.settings),
                cursor=lambda: self.learner.cursor,
                learn=self._learn_episodes,
                skip_to=self._skip_to,
                bus=self._ctx.bus,
                poll_interval_s=self._cfg.poll_interval_s,
                scan_batch=self._cfg.scan_batch,
                connect=lambda target: clients.aio_channel(target=target),
                tasks=self._ctx.tasks,
                on_lag=self._metrics.vault_lag.set,
                namespace=self._namespace,
            )
            self._follower.start()

    def _load_streams(self) -> None:
        for path in state_store.stream_files(self._dir):
            spec = StreamSpec.from_json(state_store.read_stream(path))
            learner = self.streams.new_learner(spec)
            state_store.load(path, learner)
            self.streams.restore(spec, learner)

    def register(self, server: grpc.aio.Server) -> None:
        # One learner per namespace: each call is answered by its namespace's learner.
        self._units = learner_units(
            self._ctx, data_dir(self._ctx.settings), LearnerUnit(self, KoopmanLearnerServicer(self))
        )
        add_scoped_servicer(
            koopman_pb2_grpc.add_KoopmanLearnerServicer_to_server,
            self._units.servicer(),
            server,
            self._units.prepare,
        )

    async def stop(self) -> None:
        if self._units is not None:
            await self._units.close()
        if self._follower is not None:
            await self._follower.stop()
        self._executor.shutdown(wait=True)

    # -- config reload (reload.py) -------------------------------------------------------------

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

    # -- Backend -------------------------------------------------------------------------------

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def set_knobs(self, knobs: KoopmanLearnerConfig) -> None:
        # On the worker, so a knob never changes in the middle of an update.
        await self.run(lambda: self._apply_knobs(knobs))

    def _apply_knobs(self, knobs: KoopmanLearnerConfig) -> None:
        self.streams.set_knobs(knobs)
        self._metrics.set_knobs(knobs, self.learner.view.rank_in_force)
        log.info("kcl_knobs_changed", **knobs.model_dump())

    async def _learn_episodes(self, episodes: Sequence[episodic_pb2.Episode]) -> None:
        activity = [codec.activity_from_episode(e) for e in episodes]
        result, named = await self.run(lambda: self.streams.process_episodes(activity))
        for stream, update in named:
            await self.after_update(update, stream)
        await self.after_update(result)

    async def _skip_to(self, seq: int) -> None:
        def advance() -> None:
            self.learner.skip_to(seq)
            state_store.save(self._path, self.learner)

        await self.run(advance)

    async def after_update(self, result: UpdateResult, stream: str = "") -> None:
        if stream:
            # A named stream keeps its own file; metrics and events describe the default one.
            named = self.streams.named[stream]
            path = state_store.stream_path(self._dir, stream)
            await self.run(lambda: state_store.save(path, named.learner, named.spec.to_json()))
            return
        await self.run(lambda: state_store.save(self._path, self.learner))
        view = self.learner.view
        self._metrics.observe_update(result)
        self._metrics.set_view(view)
        if view.model is not None and view.model_version != self._last_published_version:
            self._last_published_version = view.model_version
            self._ctx.bus.publish(
                KCL_MODES_UPDATED,
                events_pb2.ModesUpdated(
                    header=new_header(SOURCE),
                    mode_count=view.model.rank,
                    rank=view.rank_in_force,
                    psi_drift=view.psi_drift,
                ),
            )
        if result.couplings is not None:
            self._publish_couplings(result.couplings)

    async def after_couplings(self, outcome: CouplingsOutcome) -> None:
        await self.run(lambda: state_store.save(self._path, self.learner))
        if outcome.accepted:
            self._metrics.coupling_updates.inc()
        self._metrics.set_view(self.learner.view)
        self._publish_couplings(outcome)

    def _publish_couplings(self, outcome: CouplingsOutcome) -> None:
        estimate = outcome.estimate
        if not outcome.accepted or estimate is None:
            return
        self._ctx.bus.publish(
            KCL_COUPLINGS_UPDATED,
            events_pb2.CouplingsUpdated(
                header=new_header(SOURCE),
                coupling_count=int((estimate.couplings > 0).sum()),
                oscillator_count=len(estimate.concept_ids),
            ),
        )

    async def after_stream_reset(self, stream: str) -> None:
        path = state_store.stream_path(self._dir, stream)
        await self.run(lambda: path.unlink(missing_ok=True))

    async def after_reset(self) -> None:
        await self.run(lambda: state_store.save(self._path, self.learner))
        self._metrics.set_view(self.learner.view)
        self._last_published_version = self.learner.view.model_version
        if self._follower is not None:
            self._follower.wake()

    def vault_status(self) -> tuple[bool, int, str]:
        f = self._follower
        return (False, 0, "") if f is None else (f.connected, f.vault_last_seq, f.last_error)


def main() -> None:
    sys.exit(run("koopman-learner", "koopman_learner", KoopmanLearnerService))


if __name__ == "__main__":
    main()
