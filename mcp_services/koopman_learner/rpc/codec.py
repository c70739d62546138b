"""Protos in and out at the service edge; validation that names the field at fault.

Requests become :class:`~mcp_services.koopman_learner.domain.traces.Trace` objects, vault
episodes become :class:`~mcp_services.koopman_learner.domain.learner.EpisodeActivity`, and domain
results become response messages. Domain code never sees a `_pb2` object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mcp_services.common.errors import InputError
from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.domain import DmdModel, describe_modes
from mcp_services.koopman_learner.domain.embedding import ScalingKind
from mcp_services.koopman_learner.domain.learner import EpisodeActivity, View
from mcp_services.koopman_learner.domain.modes import DEFAULT_MIN_PERSISTENCE, ModeSummary
from mcp_services.koopman_learner.domain.streams import (
    TIME_UNITS,
    RawTrace,
    StreamOptions,
    StreamSet,
    StreamSpec,
    check_name,
)
from mcp_services.koopman_learner.domain.traces import RawSnapshot, Trace, trace_from_snapshots
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig

MAX_CONCEPT_ID_LEN = 256
STABILITY_TOLERANCE = 1e-9


class InvalidInput(InputError):
    """A request field is malformed: `field` names it, the message says the fix."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field


class TooLarge(Exception):
    """A request beyond a configured limit (RESOURCE_EXHAUSTED)."""


def snapshot_from_proto(
    act: pb.ConceptActivation | episodic_pb2.ConceptActivation,
    where: str,
    time_s: float,
    *,
    raw: bool = False,
) -> RawSnapshot:
    """Validate one activation (ids unique and non-empty, strengths in [0, 1], phases finite).

    With `raw` a strength may be any finite number (a named stream checks the range itself,
    unless it scales its values).
    """
    ids = list(act.concept_ids)
    strengths = list(act.strengths)
    phases = list(act.phases)
    if len(strengths) != len(ids):
        raise InvalidInput(
            f"{where}.strengths",
            f"has {len(strengths)} values for {len(ids)} concept_ids; give one per concept",
        )
    if phases and len(phases) != len(ids):
        raise InvalidInput(
            f"{where}.phases", f"has {len(phases)} values for {len(ids)} concept_ids; give one"
            " per concept or none",
        )  # fmt: skip
    seen: set[str] = set()
    for i, cid in enumerate(ids):
        if not cid or len(cid) > MAX_CONCEPT_ID_LEN:
            raise InvalidInput(
                f"{where}.concept_ids[{i}]",
                f"must be a non-empty id of at most {MAX_CONCEPT_ID_LEN} characters",
            )
        if cid in seen:
            raise InvalidInput(f"{where}.concept_ids[{i}]", f"repeats {cid!r}; list each once")
        seen.add(cid)
    for i, value in enumerate(strengths):
        if not math.isfinite(value):
            raise InvalidInput(f"{where}.strengths[{i}]", f"is {value}; give a finite number")
        if not raw and not 0.0 <= value <= 1.0:
            raise InvalidInput(f"{where}.strengths[{i}]", f"is {value}; give a number in [0, 1]")
    for i, value in enumerate(phases):
        if not math.isfinite(value):
            raise InvalidInput(f"{where}.phases[{i}]", f"is {value}; give a finite angle in rad")
    return RawSnapshot(
        time_s,
        dict(zip(ids, (float(s) for s in strengths), strict=True)),
        dict(zip(ids, (float(p) for p in phases), strict=True)) if phases else None,
    )


def traces_from_request(
    request: pb.ProcessActivationBatchRequest,
    dt: float,
    *,
    max_snapshots: int,
    max_concepts: int,
) -> list[Trace]:
    """The default stream's traces on the learner's grid (`times`, if given, in seconds).

    Raises:
        InvalidInput: a malformed field (named).
        TooLarge: more snapshots or concepts than the limits allow.
    """
    if request.HasField("options"):
        raise InvalidInput(
            "options", "is only for a named stream; set `stream` too (the default stream is"
            " sampled every koopman_learner.dt_s and takes strengths in [0, 1])",
        )  # fmt: skip
    if not math.isfinite(request.dt_s) or request.dt_s < 0:
        raise InvalidInput("dt_s", f"is {request.dt_s}; give 0 (the learner's dt) or {dt}")
    if request.dt_s and not math.isclose(request.dt_s, dt, rel_tol=1e-9):
        raise InvalidInput(
            "dt_s",
            f"is {request.dt_s} s but the default stream samples every {dt} s"
            " (koopman_learner.dt_s, KCL_DT_S); send 0, or name a stream (`stream`, with"
            " options.dt and options.time_unit) to learn these traces at their own interval",
        )
    out: list[Trace] = []
    for raw in raw_traces(request, max_snapshots, max_concepts, raw=False):
        snaps = raw.snapshots
        if not raw.timed:
            snaps = tuple(RawSnapshot(s.time_s * dt, s.strengths, s.phases) for s in snaps)
        built = trace_from_snapshots(snaps, dt)
        if built is not None:
            out.append(built)
    return out


def stream_batch_from_request(
    request: pb.ProcessActivationBatchRequest, *, max_snapshots: int, max_concepts: int
) -> tuple[str, StreamOptions, list[RawTrace]]:
    """A named stream's batch: its name, the options it declares, its traces as sent.

    Raises:
        InvalidInput: a malformed field (named).
        TooLarge: more snapshots or concepts than the limits allow.
    """
    name = check_name(request.stream)
    o = request.options
    if not math.isfinite(request.dt_s) or request.dt_s < 0:
        raise InvalidInput("dt_s", f"is {request.dt_s}; give the interval in seconds, or 0")
    if not math.isfinite(o.dt) or o.dt < 0:
        raise InvalidInput("options.dt", f"is {o.dt}; give the interval in time_unit, or 0")
    if o.time_unit and o.time_unit not in TIME_UNITS:
        raise InvalidInput(
            "options.time_unit", f"is {o.time_unit!r}; use one of {', '.join(TIME_UNITS)}"
        )
    if o.scaling not in pb.Scaling.values():
        raise InvalidInput("options.scaling", f"is {o.scaling}; use a Scaling value")
    options = StreamOptions(
        dt=o.dt,
        time_unit=o.time_unit,
        delays=o.delays,
        scaling=_SCALING_KIND.get(o.scaling),
        dt_s=request.dt_s,
    )
    # A named stream may be declared before its data arrives (options and no traces).
    empty_ok = request.HasField("options")
    return (
        name,
        options,
        raw_traces(request, max_snapshots, max_concepts, raw=True, empty_ok=empty_ok),
    )


def raw_traces(
    request: pb.ProcessActivationBatchRequest,
    max_snapshots: int,
    max_concepts: int,
    *,
    raw: bool,
    empty_ok: bool = False,
) -> list[RawTrace]:
    """The request's traces validated (shapes, times, limits), times as sent or the index."""
    if not request.traces and not request.force_refit and not empty_ok:
        raise InvalidInput("traces", "is empty; send at least one trace of 2 or more snapshots")
    total = sum(len(t.snapshots) for t in request.traces)
    if total > max_snapshots:
        raise TooLarge(
            f"traces carry {total} snapshots, more than koopman_learner.max_batch_snapshots"
            f" ({max_snapshots}); split the batch"
        )
    out: list[RawTrace] = []
    concepts: set[str] = set()
    for k, trace in enumerate(request.traces):
        if len(trace.snapshots) < 2:
            raise InvalidInput(
                f"traces[{k}].snapshots",
                f"has {len(trace.snapshots)}; a trace needs at least 2 snapshots",
            )
        times = list(trace.times)
        if times:
            _check_times(times, len(trace.snapshots), k)
        snaps = tuple(
            snapshot_from_proto(
                s, f"traces[{k}].snapshots[{t}]", times[t] if times else float(t), raw=raw
            )
            for t, s in enumerate(trace.snapshots)
        )
        for s in snaps:
            concepts.update(s.strengths)
        if len(concepts) > max_concepts:
            raise TooLarge(
                f"traces mention more than koopman_learner.max_concepts ({max_concepts}) concepts;"
                " send fewer concepts"
            )
        out.append(RawTrace(snaps, bool(times)))
    return out


def _check_times(times: list[float], n: int, k: int) -> None:
    if len(times) != n:
        raise InvalidInput(
            f"traces[{k}].times", f"has {len(times)} values for {n} snapshots; give one each"
        )
    for t in range(n):
        if not math.isfinite(times[t]) or (t and times[t] <= times[t - 1]):
            raise InvalidInput(
                f"traces[{k}].times[{t}]",
                f"is {times[t]}; give finite times, strictly increasing",
            )


def activity_from_episode(episode: episodic_pb2.Episode) -> EpisodeActivity:
    """An episode's activity: its frames as one trace, else its activation as one snapshot.

    A malformed activation (the vault validates puts, so only a vault bug) yields no snapshot.
    """
    source = f"{episode.source.type}/{episode.source.id}"
    base_s = episode.timestamp.seconds + episode.timestamp.nanos * 1e-9
    try:
        if len(episode.trace) >= 2:
            snaps = tuple(
                snapshot_from_proto(f.activation, f"trace[{i}]", f.offset_ms / 1000.0)
                for i, f in enumerate(episode.trace)
            )
            return EpisodeActivity(episode.seq, source, snaps, True)
        if len(episode.trace) == 1:
            act = episode.trace[0].activation
            base_s += episode.trace[0].offset_ms / 1000.0
        elif episode.HasField("activation"):
            act = episode.activation
        else:
            return EpisodeActivity(episode.seq, source, (), False)
        return EpisodeActivity(
            episode.seq, source, (snapshot_from_proto(act, "activation", base_s),), False
        )
    except InvalidInput:
        return EpisodeActivity(episode.seq, source, (), False)


_SCALING_KIND: dict[int, ScalingKind] = {
    pb.SCALING_NONE: "none",
    pb.SCALING_MINMAX: "minmax",
    pb.SCALING_ROBUST: "robust",
}
_SCALING_PB = {kind: value for value, kind in _SCALING_KIND.items()}


def period(summary: ModeSummary, unit_s: float) -> float:
    """1 / |frequency| in units of `unit_s` seconds; 0 for a mode that does not oscillate."""
    return 1.0 / (abs(summary.frequency_hz) * unit_s) if summary.oscillating else 0.0


def mode_to_proto(
    summary: ModeSummary, with_concepts: bool = True, unit_s: float = 1.0
) -> pb.SpectralMode:
    lam = summary.eigenvalue
    return pb.SpectralMode(
        index=summary.index,
        eigenvalue_real=lam.real,
        eigenvalue_imag=lam.imag,
        magnitude=abs(lam),
        frequency_hz=summary.frequency_hz,
        growth_rate=summary.growth_rate,
        damping_ratio=summary.damping_ratio,
        amplitude=summary.amplitude,
        stable=abs(lam) <= 1.0 + STABILITY_TOLERANCE,
        dominant_concepts=[
            pb.DominantConcept(concept_id=d.concept_id, weight=d.weight, phase_shift=d.phase_shift)
            for d in summary.dominant
        ]
        if with_concepts
        else [],
        period=period(summary, unit_s),
        persistence=summary.persistence,
        significance=summary.significance,
        significant=summary.significant,
    )


def stream_info(
    name: str, spec: StreamSpec | None, knobs: KoopmanLearnerConfig, view: View
) -> pb.StreamInfo:
    """How a stream is sampled and prepared; the default stream when `spec` is None."""
    out = pb.StreamInfo(
        name=name,
        snapshots_processed=view.counters.snapshots_processed,
        model_version=view.model_version,
    )
    if spec is None:
        out.dt, out.time_unit, out.dt_s = knobs.dt_s, "s", knobs.dt_s
        out.delays, out.scaling = 1, pb.SCALING_NONE
        return out
    out.dt, out.time_unit, out.dt_s = spec.dt, spec.time_unit, spec.dt_s
    out.delays, out.delays_automatic = spec.delays, spec.delays_automatic
    out.scaling = _SCALING_PB[spec.scaling.kind]  # type: ignore[assignment]  # an enum value
    s = spec.scaling
    out.concept_scaling.extend(
        pb.ConceptScaling(concept_id=c, offset=o, scale=k)
        for c, o, k in zip(s.concept_ids, s.offsets, s.scales, strict=True)
    )
    return out


def select_modes_for_request(
    model: DmdModel,
    request: pb.GetSpectralModesRequest,
    *,
    horizon: int = 0,
    min_persistence: float = DEFAULT_MIN_PERSISTENCE,
) -> tuple[list[ModeSummary], int]:
    """Modes after the request's filters, sort and limit; and the model's mode count.

    Most significant first by default; modes below `min_persistence` are left out unless the
    request includes them.
    """
    if request.limit < 0 or request.limit > 1000:
        raise InvalidInput("limit", f"is {request.limit}; give 0 (all) to 1000")
    if request.top_concepts < 0 or request.top_concepts > 100:
        raise InvalidInput("top_concepts", f"is {request.top_concepts}; give 0 (5) to 100")
    if request.sort_by not in pb.ModeSort.values():
        raise InvalidInput("sort_by", f"is {request.sort_by}; use a ModeSort value")
    if model.rank == 0:
        return [], 0
    summaries = list(
        describe_modes(
            model,
            top_concepts=request.top_concepts or 5,
            horizon=horizon,
            min_persistence=min_persistence,
        )
    )
    if not request.include_insignificant:
        summaries = [s for s in summaries if s.significant]
    if request.oscillating_only:
        summaries = [s for s in summaries if s.oscillating]
    if request.exclude_unstable:
        summaries = [s for s in summaries if abs(s.eigenvalue) <= 1.0 + STABILITY_TOLERANCE]
    if request.collapse_conjugates:
        summaries = [s for s in summaries if s.eigenvalue.imag >= 0]
    key = {
        pb.MODE_SORT_UNSPECIFIED: lambda s: s.significance,
        pb.MODE_SORT_SIGNIFICANCE: lambda s: s.significance,
        pb.MODE_SORT_AMPLITUDE: lambda s: s.amplitude,
        pb.MODE_SORT_FREQUENCY: lambda s: abs(s.frequency_hz),
        pb.MODE_SORT_GROWTH_RATE: lambda s: s.growth_rate,
        pb.MODE_SORT_MAGNITUDE: lambda s: abs(s.eigenvalue),
    }[request.sort_by]
    # Stable sort: ties (a conjugate pair's halves) keep the model's order.
    summaries.sort(key=key, reverse=not request.ascending)
    if request.limit:
        summaries = summaries[: request.limit]
    return summaries, model.rank


def state_vector(
    state: pb.ConceptActivation, concept_ids: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """The prediction's start over `concept_ids`, and the state's concepts the model lacks."""
    snap = snapshot_from_proto(state, "state", 0.0)
    row = {cid: i for i, cid in enumerate(concept_ids)}
    x0 = np.zeros(len(concept_ids))
    ignored = []
    for cid, value in snap.strengths.items():
        if cid in row:
            x0[row[cid]] = value
        else:
            ignored.append(cid)
    return x0, ignored


# Leading periods per stream in GetKclStats (memory.kcl_status shows them).
DIGEST_PERIODS = 3


def stream_digests(streams: StreamSet) -> list[pb.StreamDigest]:
    """Each stream with a model, the default first, with its leading significant periods."""
    out = []
    named = sorted(streams.named.items())
    entries: list[tuple[str, StreamSpec | None, View]] = [("", None, streams.default.view)]
    entries += [(name, s.spec, s.learner.view) for name, s in named]
    for name, spec, view in entries:
        model = view.model
        if model is None:
            continue
        knobs = streams.knobs
        unit_s = spec.unit_s if spec is not None else 1.0
        summaries = [
            s
            for s in describe_modes(
                model, top_concepts=1, horizon=view.horizon, min_persistence=knobs.min_persistence
            )
            if s.significant and s.oscillating and s.eigenvalue.imag > 0
        ]
        summaries.sort(key=lambda s: s.significance, reverse=True)
        out.append(
            pb.StreamDigest(
                name=name,
                time_unit=spec.time_unit if spec is not None else "s",
                dt=spec.dt if spec is not None else knobs.dt_s,
                delays=spec.delays if spec is not None else 1,
                model_version=view.model_version,
                mode_count=model.rank,
                periods=[
                    pb.PeriodDigest(
                        period=period(s, unit_s),
                        frequency_hz=s.frequency_hz,
                        growth_rate=s.growth_rate,
                        significance=s.significance,
                        persistence=s.persistence,
                    )
                    for s in summaries[:DIGEST_PERIODS]
                ],
            )
        )
    return out
