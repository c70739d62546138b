"""Streams: each with its own clock, delay embedding and scaling, each learnt as its own model.

The *default stream* (name "") is what the learner always had: the vault follower's activity and
traces sent without a stream name, sampled every koopman_learner.dt_s seconds, strengths in
[0, 1], no embedding. A *named stream* is declared by its first ProcessActivationBatch:

* its sampling interval `dt` in a `time_unit` (s, min, h, d, week, month, quarter, year), given,
  or taken from the request's dt_s, or inferred from the first trace's `times` (median step);
  later batches are checked against it, so a trace at another rate is refused, not misread;
* its delay embedding (embedding.py): `delays` given, or chosen from the first trace's length;
* its scaling: none (strengths in [0, 1] as for the default stream), or min-max / robust fitted
  per concept on the first batch, so raw measurements can be sent as they are.

Each named stream has its own :class:`~mcp_services.koopman_learner.domain.learner.Learner` (window,
DMD model, online tracker) at dt in seconds, so frequencies are in Hz; periods are reported in
the stream's unit. Couplings are not estimated on an embedded stream (its rows are lagged copies
of one another, not oscillators).

A stream may be declared without data (options and no traces); automatic delays are then chosen
from its first trace. A named stream whose name is a vault source, `<source type>/<source id>`,
also takes that source's episodes when the learner follows the vault: episodes with frames are
traces, activation-only episodes are strung together at the stream's dt (a gap longer than
koopman_learner.stream_max_gap_s or two samples, whichever is longer, starts a new trace).

Not thread-safe: the service's single numerics worker owns it, like the learners.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import structlog

from mcp_services.common.errors import InputError
from mcp_services.koopman_learner.domain.arrays import FloatArray
from mcp_services.koopman_learner.domain.embedding import (
    Scaling,
    ScalingKind,
    auto_delays,
    delay_embed,
)
from mcp_services.koopman_learner.domain.learner import EpisodeActivity, Learner, UpdateResult
from mcp_services.koopman_learner.domain.traces import (
    RawSnapshot,
    StreamAssembler,
    Trace,
    trace_from_snapshots,
)
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig

log = structlog.get_logger(__name__)
_YEAR_S = 365.2425 * 86400.0
TIME_UNITS: dict[str, float] = {
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "week": 7 * 86400.0,
    "month": _YEAR_S / 12,
    "quarter": _YEAR_S / 4,
    "year": _YEAR_S,
}
MAX_STREAM_NAME = 128
# A later trace's median time step may differ from the stream's dt by this share.
_DT_TOLERANCE = 0.01
ONE_CONCEPT_NOTE = (
    "the model covers one concept: a real one-concept model has a single real mode and cannot"
    " oscillate; "
)


class StreamError(InputError):
    """A batch that contradicts its stream: `field` names the request field, the message the fix."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field


class UnknownStream(LookupError):
    """No stream of that name (NOT_FOUND)."""


class TooManyStreams(Exception):
    """koopman_learner.max_streams named streams exist already (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class StreamOptions:
    """What a request declares; 0, "" and None mean "not given"."""

    dt: float = 0.0
    time_unit: str = ""
    delays: int = 0
    scaling: ScalingKind | None = None
    dt_s: float = 0.0


@dataclass(frozen=True)
class RawTrace:
    """One trace as sent: snapshot times in the stream's unit when `timed`, else the index t."""

    snapshots: tuple[RawSnapshot, ...]
    timed: bool


@dataclass(frozen=True)
class StreamSpec:
    """How a named stream is sampled and prepared; fixed by its first batch."""

    name: str
    dt: float
    time_unit: str
    delays: int
    delays_automatic: bool
    scaling: Scaling

    @property
    def unit_s(self) -> float:
        return TIME_UNITS[self.time_unit]

    @property
    def dt_s(self) -> float:
        return self.dt * self.unit_s

    def to_json(self) -> dict[str, object]:
        s = self.scaling
        return {
            "name": self.name, "dt": self.dt, "time_unit": self.time_unit, "delays": self.delays,
            "delays_automatic": self.delays_automatic, "scaling": s.kind,
            "scaled_ids": list(s.concept_ids), "offsets": list(s.offsets), "scales": list(s.scales),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, object]) -> StreamSpec:
        scaling = Scaling(
            data["scaling"],  # type: ignore[arg-type]
            tuple(str(c) for c in data["scaled_ids"]),  # type: ignore[attr-defined]
            tuple(float(v) for v in data["offsets"]),  # type: ignore[attr-defined]
            tuple(float(v) for v in data["scales"]),  # type: ignore[attr-defined]
        )
        return cls(
            str(data["name"]), float(data["dt"]), str(data["time_unit"]),  # type: ignore[arg-type]
            int(data["delays"]), bool(data["delays_automatic"]), scaling,  # type: ignore[call-overload]
        )  # fmt: skip


def stream_knobs(knobs: KoopmanLearnerConfig, spec: StreamSpec) -> KoopmanLearnerConfig:
    """A named stream's learner knobs: the service's, at the stream's dt (seconds)."""
    return knobs.model_copy(
        update={"dt_s": spec.dt_s, "auto_couplings": knobs.auto_couplings and spec.delays == 1}
    )


@dataclass
class NamedStream:
    spec: StreamSpec
    learner: Learner
    # Activation-only vault episodes of the source waiting to form a trace. Not persisted: a
    # restart loses at most the last piece (< STREAM_FLUSH_SNAPSHOTS snapshots) of each source.
    assembler: StreamAssembler | None = None


def check_name(name: str) -> str:
    if len(name) > MAX_STREAM_NAME or not name.isprintable():
        raise StreamError(
            "stream", f"is not a usable name; give 1-{MAX_STREAM_NAME} printable characters"
        )
    return name


class StreamSet:
    """The default stream's learner and the named streams' learners, by name."""

    def __init__(self, default: Learner, stream_max_gap_s: float = 1.0) -> None:
        self.default = default
        self.named: dict[str, NamedStream] = {}
        self._max_gap_s = stream_max_gap_s

    @property
    def knobs(self) -> KoopmanLearnerConfig:
        return self.default.knobs

    def get(self, name: str) -> Learner:
        """The learner of stream `name` ("" the default); UnknownStream when there is none."""
        if not name:
            return self.default
        stream = self.named.get(name)
        if stream is None:
            raise UnknownStream(
                f"no stream named {name!r}; send it with ProcessActivationBatch (stream, options)"
                f" first (streams: {', '.join(sorted(self.named)) or 'none'})"
            )
        return stream.learner

    def spec(self, name: str) -> StreamSpec | None:
        stream = self.named.get(name)
        return None if stream is None else stream.spec

    def set_knobs(self, knobs: KoopmanLearnerConfig) -> None:
        self.default.set_knobs(knobs)
        for stream in self.named.values():
            stream.learner.set_knobs(stream_knobs(knobs, stream.spec))

    def forget(self, name: str) -> None:
        if name not in self.named:
            raise UnknownStream(f"no stream named {name!r}; nothing to reset")
        del self.named[name]

    def restore(self, spec: StreamSpec, learner: Learner) -> None:
        self.named[spec.name] = NamedStream(spec, learner)

    def new_learner(self, spec: StreamSpec) -> Learner:
        return Learner(stream_knobs(self.knobs, spec))

    # -- a batch for a named stream ------------------------------------------------------------

    def process(
        self,
        name: str,
        options: StreamOptions,
        raw: Sequence[RawTrace],
        *,
        force_refit: bool = False,
    ) -> tuple[StreamSpec, UpdateResult]:
        """Prepare `raw` for stream `name` (declaring it on first use) and learn from it.

        Raises:
            StreamError: a trace or option that contradicts the stream (named field).
            TooManyStreams: a new stream beyond koopman_learner.max_streams.
        """
        check_name(name)
        stream = self.named.get(name)
        if stream is None:
            if len(self.named) >= self.knobs.max_streams:
                raise TooManyStreams(
                    f"koopman_learner.max_streams ({self.knobs.max_streams}) named streams exist;"
                    " reset one (ResetSystem stream=...) or raise the setting"
                )
            spec = self._declare(name, options, raw)
        else:
            spec = self._check(stream.spec, options, raw)
        learner = stream.learner if stream is not None else self.new_learner(spec)
        spec, result = self._learn(spec, learner, self._grid(spec, raw), force_refit)
        # Only a batch that was accepted declares (or extends) the stream.
        self.named[name] = NamedStream(spec, learner, stream.assembler if stream else None)
        return spec, result

    def process_episodes(
        self, episodes: Sequence[EpisodeActivity]
    ) -> tuple[UpdateResult, list[tuple[str, UpdateResult]]]:
        """Vault episodes: those of a source that names a stream go to it, the rest to the
        default stream, whose cursor moves past all of them.

        Returns the default stream's update and each named stream's that took episodes.
        """
        routed: dict[str, list[EpisodeActivity]] = {}
        rest: list[EpisodeActivity] = []
        for episode in episodes:
            if episode.source in self.named:
                routed.setdefault(episode.source, []).append(episode)
            else:
                rest.append(episode)
        updates = []
        for name, mine in routed.items():
            stream = self.named[name]
            if stream.assembler is None:
                gap = max(self._max_gap_s, 2 * stream.spec.dt_s)
                stream.assembler = StreamAssembler(stream.spec.dt_s, gap)
            gridded: list[Trace] = []
            for episode in mine:
                if episode.is_trace:
                    built = trace_from_snapshots(episode.snapshots, stream.spec.dt_s)
                    gridded += [built] if built is not None else []
                elif episode.snapshots:
                    gridded += stream.assembler.add(episode.source, episode.snapshots[0])
            stream.learner.counters.episodes_processed += len(mine)
            try:
                spec, result = self._learn(stream.spec, stream.learner, gridded, False)
            except StreamError as exc:
                # The vault's episodes cannot be refused; they are skipped, and said so.
                stream.learner.counters.episodes_skipped += len(mine)
                log.warning("kcl_stream_episodes_skipped", stream=name, reason=str(exc))
                continue
            stream.spec = spec
            updates.append((name, result))
        result = self.default.process_episodes(rest)
        if episodes:
            self.default.skip_to(max(e.seq for e in episodes))
        return result, updates

    def _learn(
        self, spec: StreamSpec, learner: Learner, gridded: list[Trace], force_refit: bool
    ) -> tuple[StreamSpec, UpdateResult]:
        if spec.delays == 0 and gridded:
            first = gridded[0]
            d = auto_delays(
                first.n_snapshots, len(first.concept_ids), self.knobs.max_delays,
                self.knobs.max_concepts,
            )  # fmt: skip
            spec = replace(spec, delays=d)
        traces, scaling, notes = self._finish(spec, gridded)
        spec = replace(spec, scaling=scaling)
        result = learner.process_traces(traces, force_refit=force_refit)
        notes += self.oscillation_notes(learner, spec)
        if notes:
            result = replace(result, note="; ".join(n for n in (result.note, *notes) if n))
        return spec, result

    def oscillation_notes(self, learner: Learner, spec: StreamSpec | None) -> list[str]:
        model = learner.view.model
        if model is None or len(model.concept_ids) >= 2:
            return []
        if spec is None:
            return [
                ONE_CONCEPT_NOTE + "send it as a named stream (stream, options.delays 0 for"
                " automatic delay embedding)"
            ]
        return [ONE_CONCEPT_NOTE + "declare options.delays (0: automatic) for a new stream"]

    def _declare(self, name: str, options: StreamOptions, raw: Sequence[RawTrace]) -> StreamSpec:
        unit = options.time_unit or "s"
        if unit not in TIME_UNITS:
            raise StreamError(
                "options.time_unit", f"is {unit!r}; use one of {', '.join(TIME_UNITS)}"
            )
        dt = options.dt
        if not dt and options.dt_s:
            dt = options.dt_s / TIME_UNITS[unit]
        if not dt:
            timed = [t for t in raw if t.timed]
            if not timed:
                raise StreamError(
                    "options.dt",
                    "is 0 and the traces carry no times; declare the stream's sampling interval"
                    " (options.dt in options.time_unit) or send traces with times",
                )
            dt = _median_step(timed[0])
        if not math.isfinite(dt) or dt <= 0:
            raise StreamError("options.dt", f"is {dt}; give the sampling interval, > 0")
        knobs = self.knobs
        if options.delays < 0 or options.delays > knobs.max_delays:
            raise StreamError(
                "options.delays",
                f"is {options.delays}; give 0 (automatic), 1 (none) or up to"
                f" koopman_learner.max_delays ({knobs.max_delays})",
            )
        # Automatic delays (0 until then) are chosen from the stream's first trace.
        scaling = Scaling(options.scaling or "none")
        return StreamSpec(name, dt, unit, options.delays, options.delays == 0, scaling)

    def _check(
        self, spec: StreamSpec, options: StreamOptions, raw: Sequence[RawTrace]
    ) -> StreamSpec:
        fix = (
            f"; stream {spec.name!r} was declared with its first batch (dt {spec.dt:g}"
            f" {spec.time_unit}, delays {spec.delays}, scaling {spec.scaling.kind}): send the same"
            f" or leave it unset, or ResetSystem(stream={spec.name!r}) to declare it afresh"
        )
        if options.time_unit and options.time_unit != spec.time_unit:
            raise StreamError("options.time_unit", f"is {options.time_unit!r}" + fix)
        # options.dt is in the stream's unit (checked equal above, or left unset); dt_s in s.
        given = options.dt if options.dt else options.dt_s / spec.unit_s
        if given and not math.isclose(given, spec.dt, rel_tol=1e-9):
            field = "options.dt" if options.dt else "dt_s"
            raise StreamError(field, f"is {options.dt or options.dt_s:g}" + fix)
        if options.delays and spec.delays and options.delays != spec.delays:
            raise StreamError("options.delays", f"is {options.delays}" + fix)
        if options.scaling is not None and options.scaling != spec.scaling.kind:
            raise StreamError("options.scaling", f"is {options.scaling.upper()}" + fix)
        for k, trace in enumerate(raw):
            if trace.timed and len(trace.snapshots) >= 2:
                step = _median_step(trace)
                if abs(step - spec.dt) > _DT_TOLERANCE * spec.dt:
                    raise StreamError(
                        f"traces[{k}].times",
                        f"step by {step:g} {spec.time_unit} (median) but the stream samples every"
                        f" {spec.dt:g} {spec.time_unit}; resample the trace, or use another stream",
                    )
        return spec

    def _grid(self, spec: StreamSpec, raw: Sequence[RawTrace]) -> list[Trace]:
        """Each trace on the stream's grid (seconds), values as sent."""
        gridded: list[Trace] = []
        for k, trace in enumerate(raw):
            if spec.scaling.kind == "none":
                _check_unit_range(trace, k)
            # Untimed snapshots carry their index: snapshot t is at t * dt.
            to_s = spec.unit_s if trace.timed else spec.dt_s
            seconds = [RawSnapshot(s.time_s * to_s, s.strengths, s.phases) for s in trace.snapshots]
            built = trace_from_snapshots(seconds, spec.dt_s)
            if built is not None:
                gridded.append(built)
        return gridded

    def _finish(
        self, spec: StreamSpec, gridded: list[Trace]
    ) -> tuple[list[Trace], Scaling, list[str]]:
        """Scale and embed each trace; the scaling extended to the batch's new concepts."""
        scaling = spec.scaling
        if scaling.kind != "none" and gridded:
            ids = list(dict.fromkeys(c for t in gridded for c in t.concept_ids))
            stacked = np.concatenate([t.dense(ids) for t in gridded], axis=1)
            scaling = scaling.extended(stacked, ids)
        out: list[Trace] = []
        short = 0
        for grid in gridded:
            values: FloatArray = scaling.apply(grid.values, grid.concept_ids)
            if spec.delays == 1:
                out.append(Trace(grid.concept_ids, values, grid.phases))
            elif grid.n_snapshots < spec.delays + 1:
                short += 1
            else:
                limit = self.knobs.max_concepts
                if len(grid.concept_ids) * spec.delays > limit:
                    raise StreamError(
                        "options.delays",
                        f"{spec.delays} x {len(grid.concept_ids)} concepts exceed"
                        f" koopman_learner.max_concepts ({limit}) embedded rows; send fewer"
                        " concepts or declare fewer delays",
                    )
                embedded, rows = delay_embed(values, grid.concept_ids, spec.delays)
                out.append(Trace(rows, embedded, None))
        notes = []
        if short:
            notes.append(
                f"{short} trace(s) shorter than delays + 1 = {spec.delays + 1} samples carry no"
                " snapshot pair after embedding and were left out; send longer traces"
            )
        return out, scaling, notes


def _median_step(trace: RawTrace) -> float:
    times = np.asarray([s.time_s for s in trace.snapshots], dtype=np.float64)
    return float(np.median(np.diff(times)))


def _check_unit_range(trace: RawTrace, k: int) -> None:
    for t, snap in enumerate(trace.snapshots):
        for cid, value in snap.strengths.items():
            if not 0.0 <= value <= 1.0:
                raise StreamError(
                    f"traces[{k}].snapshots[{t}].strengths",
                    f"has {value} for {cid!r}; give numbers in [0, 1], or declare"
                    " options.scaling (MINMAX or ROBUST) with the stream's first batch to send"
                    " raw measurements",
                )
