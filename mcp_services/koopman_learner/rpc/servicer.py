"""The KoopmanLearner gRPC servicer: proto in, proto out, errors mapped to status codes.

Every call that changes the learner runs on the service's single numerics worker (off the event
loop, one at a time); read calls use the learner's immutable view and never wait for an update.
INVALID_ARGUMENT names the field (validation raises InputError: codec.InvalidInput,
streams.StreamError); FAILED_PRECONDITION says what data is missing; ERRORS below maps the rest.
Any other exception, a ValueError of the numerics included, is the service's fault: INTERNAL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, TypeVar

import grpc
import numpy as np

from mcp_services.common.rpc import ErrorMap, abort
from mcp_services.common.timestamps import timestamp_of_s
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.gen.tori.koopman.v1 import koopman_pb2_grpc
from mcp_services.koopman_learner.domain import describe_modes, predict, stability
from mcp_services.koopman_learner.domain.learner import (
    CouplingsOutcome,
    Learner,
    NotReady,
    UpdateResult,
    View,
)
from mcp_services.koopman_learner.domain.streams import (
    StreamSet,
    StreamSpec,
    TooManyStreams,
    UnknownStream,
)
from mcp_services.koopman_learner.rpc import codec
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig

T = TypeVar("T")

_UPDATE_KIND = {"none": pb.UPDATE_KIND_NONE, "online": pb.UPDATE_KIND_ONLINE}
_UPDATE_KIND["refit"] = pb.UPDATE_KIND_REFIT
_COUPLING_STATUS = {
    "ok": pb.COUPLING_STATUS_OK,
    "partial": pb.COUPLING_STATUS_PARTIAL,
    "unidentifiable": pb.COUPLING_STATUS_UNIDENTIFIABLE,
}
_PHASE_SOURCE = {"fields": pb.PHASE_SOURCE_FIELDS, "analytic": pb.PHASE_SOURCE_ANALYTIC}
MAX_PREDICT_STEPS = 10_000
DEFAULT_COUPLING_LIMIT = 1000


class Backend(Protocol):
    """What the servicer needs from the service (service.LearnerService): the learner and its
    named streams, the numerics worker every change runs on, and what follows a change."""

    learner: Learner
    streams: StreamSet
    max_batch_snapshots: int
    following_vault: bool

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the numerics worker."""
        ...

    async def after_update(self, result: UpdateResult, stream: str = "") -> None:
        """Persist, export metrics and publish events after a change of `stream`."""
        ...

    async def after_stream_reset(self, stream: str) -> None:
        """Forget the state file of a named stream that was reset."""
        ...

    async def after_couplings(self, outcome: CouplingsOutcome) -> None:
        """Persist, count and publish a couplings update."""
        ...

    async def after_reset(self) -> None:
        """Persist the reset learner and look at the vault again (the cursor may have rewound)."""
        ...

    async def set_knobs(self, knobs: KoopmanLearnerConfig) -> None:
        """Apply `knobs` on the worker, from the next update."""
        ...

    def vault_status(self) -> tuple[bool, int, str]:
        """(connected, vault_last_seq, last_error)."""
        ...


ERRORS = ErrorMap(
    {
        codec.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
        TooManyStreams: grpc.StatusCode.RESOURCE_EXHAUSTED,
        UnknownStream: grpc.StatusCode.NOT_FOUND,
        NotReady: grpc.StatusCode.FAILED_PRECONDITION,
    }
)


def config_to_proto(knobs: KoopmanLearnerConfig, rank_in_force: int) -> pb.KoopmanConfig:
    return pb.KoopmanConfig(
        rank=knobs.rank,
        rank_high=knobs.rank_high,
        psi_drift_threshold=knobs.psi_drift_threshold,
        l1_strength=knobs.l1_strength,
        forgetting_factor=knobs.forgetting_factor,
        max_modes=knobs.max_modes,
        auto_tune=knobs.auto_tune,
        dt_s=knobs.dt_s,
        rank_in_force=rank_in_force,
        weight_refits=knobs.weight_refits,
        min_persistence=knobs.min_persistence,
        max_delays=knobs.max_delays,
        max_streams=knobs.max_streams,
    )


def couplings_to_proto(
    view: View, outcome: CouplingsOutcome | None, limit: int
) -> pb.OscillatorCouplings:
    estimate = view.couplings if outcome is None else outcome.estimate
    status = view.coupling_status if outcome is None else outcome.status
    links = estimate.links() if estimate is not None else ()
    out = pb.OscillatorCouplings(
        status=_COUPLING_STATUS.get(status, pb.COUPLING_STATUS_UNSPECIFIED),
        message="" if outcome is None else outcome.message,
        phase_source=_PHASE_SOURCE.get(view.phase_source, pb.PHASE_SOURCE_UNSPECIFIED),
        couplings=[
            pb.Coupling(target=link.target, source=link.source, weight=link.weight)
            for link in links[:limit]
        ],
        coupling_count=len(links),
        oscillator_count=len(estimate.concept_ids) if estimate is not None else 0,
        clamped=0 if outcome is None else outcome.clamped,
        rate_limited=0 if outcome is None else outcome.rate_limited,
        version=view.couplings_version,
    )
    if view.couplings_updated_at > 0:
        out.updated_at.CopyFrom(timestamp_of_s(view.couplings_updated_at))
    return out


def _check_knobs(
    request: pb.UpdateConfigRequest, current: KoopmanLearnerConfig
) -> KoopmanLearnerConfig:
    def has(name: str) -> bool:
        return request.HasField(name)  # type: ignore[arg-type]  # only field names below

    rank = request.rank if has("rank") else current.rank
    rank_high = request.rank_high if has("rank_high") else current.rank_high
    if rank < 1:
        raise codec.InvalidInput("rank", f"is {rank}; give an integer >= 1")
    if rank_high < rank:
        raise codec.InvalidInput("rank_high", f"({rank_high}) must be >= rank ({rank})")
    threshold = (
        request.psi_drift_threshold if has("psi_drift_threshold") else current.psi_drift_threshold
    )
    if not math.isfinite(threshold) or threshold <= 0:
        raise codec.InvalidInput("psi_drift_threshold", f"is {threshold}; give radians > 0")
    l1 = request.l1_strength if has("l1_strength") else current.l1_strength
    if not math.isfinite(l1) or not 0 <= l1 <= 1:
        raise codec.InvalidInput("l1_strength", f"is {l1}; give a number in [0, 1]")
    rho = request.forgetting_factor if has("forgetting_factor") else current.forgetting_factor
    if not math.isfinite(rho) or not 0 < rho <= 1:
        raise codec.InvalidInput("forgetting_factor", f"is {rho}; give a number in (0, 1]")
    max_modes = request.max_modes if has("max_modes") else current.max_modes
    if max_modes < 1:
        raise codec.InvalidInput("max_modes", f"is {max_modes}; give an integer >= 1")
    auto = request.auto_tune if has("auto_tune") else current.auto_tune
    return current.model_copy(
        update={
            "rank": rank,
            "rank_high": rank_high,
            "psi_drift_threshold": threshold,
            "l1_strength": l1,
            "forgetting_factor": rho,
            "max_modes": max_modes,
            "auto_tune": auto,
        }
    )


@ERRORS.servicer
class KoopmanLearnerServicer(koopman_pb2_grpc.KoopmanLearnerServicer):
    def __init__(self, backend: Backend) -> None:
        self._b = backend

    @property
    def _view(self) -> View:
        return self._b.learner.view

    async def _model_or_abort(
        self, context: grpc.aio.ServicerContext, view: View | None = None
    ) -> View:
        view = self._view if view is None else view
        if view.model is None:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "no model yet; send ProcessActivationBatch traces with active concepts "
                "(strength > 0.5) or store episodes in the vault the learner follows",
            )
        return view

    async def GetConfig(
        self, request: pb.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.KoopmanConfig:
        return config_to_proto(self._b.learner.knobs, self._view.rank_in_force)

    async def ProcessActivationBatch(
        self, request: pb.ProcessActivationBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProcessActivationBatchResponse:
        streams = self._b.streams
        learner = self._b.learner
        name = request.stream

        async def default() -> tuple[UpdateResult, StreamSpec | None]:
            traces = codec.traces_from_request(
                request,
                learner.knobs.dt_s,
                max_snapshots=self._b.max_batch_snapshots,
                max_concepts=learner.knobs.max_concepts,
            )

            def update() -> UpdateResult:
                result = learner.process_traces(traces, force_refit=request.force_refit)
                notes = streams.oscillation_notes(learner, None)
                if notes and result.kind != "none":
                    result = replace(result, note="; ".join([*notes, result.note]).strip("; "))
                return result

            result = await self._b.run(update)
            await self._b.after_update(result)
            return result, None

        async def named() -> tuple[UpdateResult, StreamSpec | None]:
            _, options, raw = codec.stream_batch_from_request(
                request,
                max_snapshots=self._b.max_batch_snapshots,
                max_concepts=learner.knobs.max_concepts,
            )
            spec, result = await self._b.run(
                lambda: streams.process(name, options, raw, force_refit=request.force_refit)
            )
            await self._b.after_update(result, name)
            return result, spec

        result, spec = await (named() if name else default())
        info = codec.stream_info(name, spec, learner.knobs, streams.get(name).view)
        return pb.ProcessActivationBatchResponse(
            update=pb.UpdateSummary(
                kind=_UPDATE_KIND[result.kind],
                traces=result.traces,
                snapshots=result.snapshots,
                mode_count=result.mode_count,
                rank=result.rank,
                psi_drift=result.psi_drift,
                rank_raised=result.rank_raised,
                prediction_error=result.prediction_error,
                update_seconds=result.update_seconds,
                note=result.note,
                model_version=result.model_version,
                stream=info,
            )
        )

    async def GetProcessingStatus(
        self, request: pb.GetProcessingStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProcessingStatus:
        view = self._view
        connected, last_seq, error = self._b.vault_status()
        c = view.counters
        out = pb.ProcessingStatus(
            following_vault=self._b.following_vault,
            vault_connected=connected,
            cursor=view.cursor,
            vault_last_seq=last_seq,
            episodes_behind=max(last_seq - view.cursor, 0),
            episodes_processed=c.episodes_processed,
            episodes_skipped=c.episodes_skipped,
            traces_processed=c.traces_processed,
            snapshots_processed=c.snapshots_processed,
            online_updates=c.online_updates,
            refits=c.refits,
            last_error=error,
            window_snapshots=view.window_snapshots,
            window_traces=view.window_traces,
            pending_stream_snapshots=view.pending_stream_snapshots,
        )
        if view.last_update > 0:
            out.last_update.CopyFrom(timestamp_of_s(view.last_update))
        return out

    async def GetSpectralModes(
        self, request: pb.GetSpectralModesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSpectralModesResponse:
        streams = self._b.streams
        learner = streams.get(request.stream)
        view = await self._model_or_abort(context, learner.view)
        model = view.model
        assert model is not None
        knobs = learner.knobs
        spec = streams.spec(request.stream)
        unit_s = spec.unit_s if spec is not None else 1.0
        summaries, total = codec.select_modes_for_request(
            model, request, horizon=view.horizon, min_persistence=knobs.min_persistence
        )
        out = pb.GetSpectralModesResponse(
            modes=[codec.mode_to_proto(s, unit_s=unit_s) for s in summaries],
            total_modes=total,
            rank=view.rank_in_force,
            dt_s=model.dt,
            model_version=view.model_version,
            concept_count=len(model.concept_ids),
            psi_drift=view.psi_drift,
            stream=codec.stream_info(request.stream, spec, self._b.learner.knobs, view),
            horizon=view.horizon,
            time_unit=spec.time_unit if spec is not None else "s",
            min_persistence=knobs.min_persistence,
        )
        if view.fitted_at > 0:
            out.fitted_at.CopyFrom(timestamp_of_s(view.fitted_at))
        return out

    async def UpdateOscillatorCouplings(
        self, request: pb.UpdateOscillatorCouplingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateOscillatorCouplingsResponse:
        if request.limit < 0 or request.limit > 100_000:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"limit is {request.limit}; give 0 (1000) to 100000",
            )
        strength = request.strength if request.HasField("strength") else 1.0
        if not math.isfinite(strength) or strength < 0:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"strength is {strength}; give a finite number >= 0 (1 is the default rule)",
            )
        learner = self._b.learner

        async def work() -> CouplingsOutcome:
            outcome = await self._b.run(lambda: learner.update_couplings(strength))
            await self._b.after_couplings(outcome)
            return outcome

        outcome = await work()
        limit = request.limit or DEFAULT_COUPLING_LIMIT
        return pb.UpdateOscillatorCouplingsResponse(
            couplings=couplings_to_proto(self._view, outcome, limit)
        )

    async def PredictActivations(
        self, request: pb.PredictActivationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictActivationsResponse:
        if not 1 <= request.steps <= MAX_PREDICT_STEPS:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"steps is {request.steps}; give 1 to {MAX_PREDICT_STEPS}",
            )
        view = await self._model_or_abort(context)
        model = view.model
        assert model is not None
        if model.rank == 0:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "the L1 selection kept no mode; lower l1_strength (UpdateConfig) to predict",
            )
        x0, ignored = codec.state_vector(request.state, model.concept_ids)
        trajectory = await self._b.run(lambda: predict(model, x0, request.steps))
        return pb.PredictActivationsResponse(
            concept_ids=list(model.concept_ids),
            predictions=[
                pb.PredictedSnapshot(
                    step=t, time_s=t * model.dt, strengths=trajectory[:, t].tolist()
                )
                for t in range(trajectory.shape[1])
            ],
            modes_used=[codec.mode_to_proto(s, False) for s in describe_modes(model)],
            ignored_concepts=ignored,
            model_version=view.model_version,
        )

    async def GetStabilityAnalysis(
        self, request: pb.GetStabilityAnalysisRequest, context: grpc.aio.ServicerContext
    ) -> pb.StabilityAnalysis:
        view = await self._model_or_abort(context)
        model = view.model
        assert model is not None
        report = stability(model, codec.STABILITY_TOLERANCE)
        summaries = describe_modes(model) if model.rank else ()
        return pb.StabilityAnalysis(
            stable=report.stable,
            spectral_radius=report.spectral_radius,
            max_growth_rate=report.max_growth_rate,
            unstable_modes=[codec.mode_to_proto(summaries[i]) for i in report.unstable_modes],
            mode_count=model.rank,
            tolerance=codec.STABILITY_TOLERANCE,
            model_version=view.model_version,
        )

    async def GetKclStats(
        self, request: pb.GetKclStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.KclStats:
        view = self._view
        knobs = self._b.learner.knobs
        model = view.model
        radius = float(np.abs(model.eigenvalues).max()) if model is not None and model.rank else 0.0
        couplings = view.couplings
        c = view.counters
        out = pb.KclStats(
            model_ready=model is not None,
            mode_count=model.rank if model is not None else 0,
            rank=view.rank_in_force,
            concept_count=len(model.concept_ids) if model is not None else 0,
            psi_drift=view.psi_drift,
            psi_drift_threshold=knobs.psi_drift_threshold,
            recommended_rank=view.recommended_rank,
            auto_tune=knobs.auto_tune,
            stable=radius <= 1.0 + codec.STABILITY_TOLERANCE,
            spectral_radius=radius,
            prediction_error=view.prediction_error,
            last_update_seconds=view.last_update_seconds,
            snapshots_processed=c.snapshots_processed,
            online_updates=c.online_updates,
            refits=c.refits,
            coupling_updates=c.coupling_updates,
            coupling_count=int((couplings.couplings > 0).sum()) if couplings is not None else 0,
            oscillator_count=len(couplings.concept_ids) if couplings is not None else 0,
            coupling_status=_COUPLING_STATUS.get(
                view.coupling_status, pb.COUPLING_STATUS_UNSPECIFIED
            ),
            model_version=view.model_version,
            vault_cursor=view.cursor,
            dt_s=knobs.dt_s,
            l1_strength=knobs.l1_strength,
            streams=codec.stream_digests(self._b.streams),
        )
        if view.last_update > 0:
            out.last_update.CopyFrom(timestamp_of_s(view.last_update))
        return out

    async def UpdateConfig(
        self, request: pb.UpdateConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.KoopmanConfig:
        knobs = _check_knobs(request, self._b.learner.knobs)
        await self._b.set_knobs(knobs)
        return config_to_proto(knobs, self._view.rank_in_force)

    async def ResetSystem(
        self, request: pb.ResetSystemRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResetSystemResponse:
        learner = self._b.learner
        if request.stream:
            streams = self._b.streams
            stream_view = streams.get(request.stream).view

            def forget() -> None:
                streams.forget(request.stream)

            await self._b.run(forget)
            await self._b.after_stream_reset(request.stream)
            return pb.ResetSystemResponse(
                cursor=self._view.cursor, model_version=stream_view.model_version + 1
            )
        await self._b.run(lambda: learner.reset(rescan_vault=request.rescan_vault))
        await self._b.after_reset()
        view = self._view
        return pb.ResetSystemResponse(cursor=view.cursor, model_version=view.model_version)
