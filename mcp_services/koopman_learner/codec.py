"""Protos in and out at the service edge; validation that names the field at fault.

Requests become :class:`~mcp_services.koopman_learner.traces.Trace` objects, vault episodes
become :class:`~mcp_services.koopman_learner.learner.EpisodeActivity`, and domain results become
response messages. Domain code never sees a `_pb2` object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.domain import DmdModel, describe_modes
from mcp_services.koopman_learner.domain.modes import ModeSummary
from mcp_services.koopman_learner.learner import EpisodeActivity
from mcp_services.koopman_learner.traces import RawSnapshot, Trace, trace_from_snapshots

MAX_CONCEPT_ID_LEN = 256
STABILITY_TOLERANCE = 1e-9


class InvalidInput(ValueError):
    """A request field is malformed: `field` names it, the message says the fix."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field


class TooLarge(ValueError):
    """A request beyond a configured limit (RESOURCE_EXHAUSTED)."""


def snapshot_from_proto(
    act: pb.ConceptActivation | episodic_pb2.ConceptActivation, where: str, time_s: float
) -> RawSnapshot:
    """Validate one activation (ids unique and non-empty, strengths in [0, 1], phases finite)."""
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
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
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
    """The request's traces on the learner's grid.

    Raises:
        InvalidInput: a malformed field (named).
        TooLarge: more snapshots or concepts than the limits allow.
    """
    if not math.isfinite(request.dt_s) or request.dt_s < 0:
        raise InvalidInput("dt_s", f"is {request.dt_s}; give 0 (the learner's dt) or {dt}")
    if request.dt_s and not math.isclose(request.dt_s, dt, rel_tol=1e-9):
        raise InvalidInput(
            "dt_s",
            f"is {request.dt_s} s but the learner samples every {dt} s; resample the traces to"
            " dt_s or send 0",
        )
    if not request.traces and not request.force_refit:
        raise InvalidInput("traces", "is empty; send at least one trace of 2 or more snapshots")
    total = sum(len(t.snapshots) for t in request.traces)
    if total > max_snapshots:
        raise TooLarge(
            f"traces carry {total} snapshots, more than koopman_learner.max_batch_snapshots"
            f" ({max_snapshots}); split the batch"
        )
    out: list[Trace] = []
    concepts: set[str] = set()
    for k, trace in enumerate(request.traces):
        if len(trace.snapshots) < 2:
            raise InvalidInput(
                f"traces[{k}].snapshots",
                f"has {len(trace.snapshots)}; a trace needs at least 2 snapshots",
            )
        snaps = [
            snapshot_from_proto(s, f"traces[{k}].snapshots[{t}]", t * dt)
            for t, s in enumerate(trace.snapshots)
        ]
        for s in snaps:
            concepts.update(s.strengths)
        if len(concepts) > max_concepts:
            raise TooLarge(
                f"traces mention more than koopman_learner.max_concepts ({max_concepts}) concepts;"
                " send fewer concepts"
            )
        built = trace_from_snapshots(snaps, dt)
        assert built is not None  # on the grid by construction, >= 2 snapshots
        out.append(built)
    return out


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


def timestamp(unix_s: float) -> Timestamp | None:
    if unix_s <= 0:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_s * 1e9))
    return ts


def mode_to_proto(summary: ModeSummary, with_concepts: bool = True) -> pb.SpectralMode:
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
    )


def select_modes_for_request(
    model: DmdModel, request: pb.GetSpectralModesRequest
) -> tuple[list[ModeSummary], int]:
    """Modes after the request's filters, sort and limit; and the model's mode count."""
    if request.limit < 0 or request.limit > 1000:
        raise InvalidInput("limit", f"is {request.limit}; give 0 (all) to 1000")
    if request.top_concepts < 0 or request.top_concepts > 100:
        raise InvalidInput("top_concepts", f"is {request.top_concepts}; give 0 (5) to 100")
    if request.sort_by not in pb.ModeSort.values():
        raise InvalidInput("sort_by", f"is {request.sort_by}; use a ModeSort value")
    if model.rank == 0:
        return [], 0
    summaries = list(describe_modes(model, top_concepts=request.top_concepts or 5))
    if request.exclude_unstable:
        summaries = [s for s in summaries if abs(s.eigenvalue) <= 1.0 + STABILITY_TOLERANCE]
    if request.collapse_conjugates:
        summaries = [s for s in summaries if s.eigenvalue.imag >= 0]
    key = {
        pb.MODE_SORT_UNSPECIFIED: lambda s: s.amplitude,
        pb.MODE_SORT_AMPLITUDE: lambda s: s.amplitude,
        pb.MODE_SORT_FREQUENCY: lambda s: abs(s.frequency_hz),
        pb.MODE_SORT_GROWTH_RATE: lambda s: s.growth_rate,
        pb.MODE_SORT_MAGNITUDE: lambda s: abs(s.eigenvalue),
    }[request.sort_by]
    # Stable sort: ties keep the model's order (largest amplitude first).
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
