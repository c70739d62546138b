"""The learner: drives the domain pipeline over a window of traces, one update at a time.

What an update does (ProcessActivationBatch, or a chunk of episodes from the vault):

1. The new traces join the window (bounded by `window_snapshots`; oldest traces leave first).
2. Before absorbing them, the operator in force predicts each of their snapshot pairs one step
   ahead: the out-of-sample *prediction error* ||Y - A X|| / ||Y||.
3. Online update (rank-1, with forgetting, in the reduced basis) when the traces stay inside
   the concepts the model covers; otherwise, or when the tracker asks for it (refit interval, or
   the basis lost energy share), or on demand: a full *refit* of the window. A refit weighs
   every pair of the window alike (the window itself bounds the memory) unless `weight_refits`
   is on, when pair j of m gets forgetting^(m - 1 - j) as in the online updates. Online updates
   always discount: each new pair multiplies the weight of everything before it by the
   forgetting factor, starting from the refit's weights, so the online operator is exactly the
   batch fit of the same pairs under those weights.
4. After a refit: psi-drift against the previous refit, the rank rule (raise to rank_high above
   the threshold; applied at once when auto_tune is on, else only recommended) and, if
   auto_couplings, a coupling update.
5. The modes served are the L1-selected ones (KCL_L1_STRENGTH, capped at max_modes) of the
   operator in force, refit on the most recent snapshots.

Not thread-safe: the service runs every mutating call on one worker thread; readers use
:attr:`Learner.view`, an immutable snapshot replaced after each change.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import structlog

from mcp_services.koopman_learner.domain import (
    CouplingEstimate,
    DmdModel,
    OnlineDmd,
    RankPolicy,
    SnapshotWindow,
    build_window,
    estimate_couplings,
    fit_dmd,
    phases_from_activations,
    psi_drift,
    select_modes,
)
from mcp_services.koopman_learner.domain.arrays import FloatArray
from mcp_services.koopman_learner.domain.snapshots import DEFAULT_ACTIVE_THRESHOLD
from mcp_services.koopman_learner.domain.traces import (
    RawSnapshot,
    StreamAssembler,
    Trace,
    trace_from_snapshots,
)
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig

log = structlog.get_logger(__name__)

UpdateKind = Literal["none", "online", "refit"]
PhaseSource = Literal["", "fields", "analytic"]

# Mode selection refits amplitudes on the most recent snapshots, cut into pieces this long (a
# growing mode's Vandermonde powers stay finite and ADMM's per-piece matrices small).
_SELECTION_PIECE = 100
_SELECTION_MIN = 200
_SELECTION_MAX = 1000
# Oscillators in one coupling estimate (N regressions with N - 1 candidates each: O(N^3)).
MAX_OSCILLATORS = 200
# Shortest trace the analytic-signal phase estimate uses (it trims 10% of each end).
_MIN_ANALYTIC_SAMPLES = 10


# A real eigenvalue this close to 1 is the steady level of the activations (their mean: they
# are >= 0, so it is never zero), not a dynamic mode; see _dynamic.
_STATIC_EIGENVALUE_GAP = 0.01


def _dynamic(model: DmdModel) -> DmdModel:
    """`model` without its steady-level modes, for psi-drift.

    Activations are non-negative, so every fit carries a large real mode at lambda ~ 1 (their
    mean level). Weighted by amplitude it would dominate psi-drift and hide how the oscillating
    and decaying modes moved, which is what the rank rule is about.
    """
    lam = model.eigenvalues
    static = (lam.imag == 0) & (np.abs(lam - 1.0) < _STATIC_EIGENVALUE_GAP)
    if static.all():
        return model
    return model.select(np.flatnonzero(~static).tolist())


class NotReady(Exception):
    """The call needs a model or more data first; the message says what (FAILED_PRECONDITION)."""


@dataclass
class Counters:
    snapshots_processed: int = 0
    traces_processed: int = 0
    online_updates: int = 0
    refits: int = 0
    coupling_updates: int = 0
    episodes_processed: int = 0
    episodes_skipped: int = 0


@dataclass(frozen=True)
class CouplingsOutcome:
    """One coupling estimate: `accepted` when it replaced the couplings in force."""

    estimate: CouplingEstimate | None  # the couplings in force after the call
    status: str  # ok / partial / unidentifiable
    phase_source: PhaseSource
    accepted: bool
    message: str
    clamped: int = 0
    rate_limited: int = 0


@dataclass(frozen=True, eq=False)
class View:
    """What readers see: an immutable snapshot of the learner after its last change."""

    model: DmdModel | None
    model_version: int
    fitted_at: float
    rank_in_force: int
    recommended_rank: int
    psi_drift: float
    prediction_error: float
    last_update_seconds: float
    couplings: CouplingEstimate | None
    coupling_status: str
    phase_source: PhaseSource
    couplings_version: int
    couplings_updated_at: float
    counters: Counters
    cursor: int
    window_snapshots: int
    window_traces: int
    pending_stream_snapshots: int
    last_update: float
    # Samples persistence is measured over: the longest trace in the window.
    horizon: int = 0


@dataclass(frozen=True)
class UpdateResult:
    kind: UpdateKind
    traces: int
    snapshots: int
    mode_count: int
    rank: int
    psi_drift: float
    rank_raised: bool
    prediction_error: float
    update_seconds: float
    note: str
    model_version: int
    couplings: CouplingsOutcome | None = None


@dataclass(frozen=True)
class EpisodeActivity:
    """One vault episode's activity: a trace of frames, or a single snapshot of a stream."""

    seq: int
    source: str
    snapshots: tuple[RawSnapshot, ...]
    is_trace: bool


@dataclass
class _State:
    window: deque[Trace] = field(default_factory=deque)
    fit_ids: tuple[str, ...] = ()
    last_fit: DmdModel | None = None
    online: OnlineDmd | None = None
    served: DmdModel | None = None
    couplings: CouplingEstimate | None = None


class Learner:
    def __init__(self, knobs: KoopmanLearnerConfig, *, stream_max_gap_s: float = 1.0) -> None:
        self._knobs = knobs
        self._s = _State()
        self._streams = StreamAssembler(knobs.dt_s, stream_max_gap_s)
        self.counters = Counters()
        self.cursor = 0
        self.model_version = 0
        self.fitted_at = 0.0
        self.rank_in_force = knobs.rank
        self.recommended_rank = knobs.rank
        self.psi_drift = 0.0
        self.prediction_error = math.nan
        self.last_update_seconds = 0.0
        self.last_update = 0.0
        self.coupling_status = ""
        self.phase_source: PhaseSource = ""
        self.couplings_version = 0
        self.couplings_updated_at = 0.0
        self.view = self._make_view()

    # -- configuration -------------------------------------------------------------------------

    @property
    def knobs(self) -> KoopmanLearnerConfig:
        return self._knobs

    @property
    def streams(self) -> StreamAssembler:
        return self._streams

    def set_knobs(self, knobs: KoopmanLearnerConfig) -> None:
        """New knobs apply from the next update; a changed base rank resets the rank in force."""
        if knobs.rank != self._knobs.rank or knobs.rank_high != self._knobs.rank_high:
            self.rank_in_force = knobs.rank
            self.recommended_rank = knobs.rank
        self._knobs = knobs
        self._trim_window()
        self.view = self._make_view()

    # -- state restored from disk (state_store.py) ------------------------------------------------

    def restore(
        self,
        window: Sequence[Trace],
        fit_ids: tuple[str, ...],
        last_fit: DmdModel | None,
        served: DmdModel | None,
        couplings: CouplingEstimate | None,
    ) -> None:
        """Put persisted state back; the online tracker is rebuilt by the next update's refit."""
        self._s = _State(deque(window), fit_ids, last_fit, None, served, couplings)
        self.view = self._make_view()

    def state(self) -> _State:
        return self._s

    def reset(self, *, rescan_vault: bool) -> None:
        """Forget modes, couplings, window, streams and the online state (counters stay)."""
        self._s = _State()
        self._streams.clear()
        self.rank_in_force = self.recommended_rank = self._knobs.rank
        self.psi_drift = 0.0
        self.prediction_error = math.nan
        self.coupling_status = ""
        self.phase_source = ""
        self.model_version += 1
        if rescan_vault:
            self.cursor = 0
        self.view = self._make_view()

    # -- updates -------------------------------------------------------------------------------

    def process_traces(self, traces: Sequence[Trace], *, force_refit: bool = False) -> UpdateResult:
        """Absorb explicit traces (each its own trajectory) and update the model."""
        started = time.perf_counter()
        traces = [t for t in traces if t.n_snapshots >= 2]
        self.counters.traces_processed += len(traces)
        self.counters.snapshots_processed += sum(t.n_snapshots for t in traces)
        self._s.window.extend(traces)
        self._trim_window()
        error = self._out_of_sample_error(traces)
        note = ""
        kind: UpdateKind = "none"
        couplings = None
        rank_raised = False
        if not traces and not force_refit:
            note = "no trace with 2 or more snapshots yet; data is buffered"
        elif force_refit or self._needs_refit(traces):
            kind, note, rank_raised, couplings = self._refit()
        else:
            online = self._s.online
            assert online is not None
            for trace in traces:
                self.counters.online_updates += online.update_trace(trace.dense(self._s.fit_ids))
            if online.needs_refit:
                kind, note, rank_raised, couplings = self._refit()
            else:
                self._serve(online.to_model())
                kind = "online"
        if kind != "none":
            if not math.isnan(error):
                self.prediction_error = error
            self.model_version += 1
            self.last_update_seconds = time.perf_counter() - started
            self.last_update = time.time()
        self.view = self._make_view()
        served = self._s.served
        return UpdateResult(
            kind=kind,
            traces=len(traces),
            snapshots=sum(t.n_snapshots for t in traces),
            mode_count=served.rank if served is not None else 0,
            rank=self.rank_in_force,
            psi_drift=self.psi_drift,
            rank_raised=rank_raised,
            prediction_error=error,
            update_seconds=time.perf_counter() - started,
            note=note,
            model_version=self.model_version,
            couplings=couplings,
        )

    def process_episodes(self, episodes: Sequence[EpisodeActivity]) -> UpdateResult:
        """Absorb a chunk of vault episodes in seq order and advance the cursor past them."""
        traces: list[Trace] = []
        for episode in episodes:
            self.counters.episodes_processed += 1
            if episode.is_trace:
                trace = trace_from_snapshots(episode.snapshots, self._knobs.dt_s)
                if trace is None:
                    self.counters.episodes_skipped += 1
                else:
                    traces.append(trace)
            elif episode.snapshots:
                traces += self._streams.add(episode.source, episode.snapshots[0])
            else:
                self.counters.episodes_skipped += 1
            self.cursor = max(self.cursor, episode.seq)
        return self.process_traces(traces)

    def skip_to(self, seq: int) -> None:
        """Move the cursor to `seq` when the vault holds nothing more up to it (purged)."""
        self.cursor = max(self.cursor, seq)
        self.view = self._make_view()

    def _needs_refit(self, traces: Sequence[Trace]) -> bool:
        if self._s.online is None:
            return True
        known = set(self._s.fit_ids)
        for trace in traces:
            active = np.max(trace.values, axis=1) > DEFAULT_ACTIVE_THRESHOLD
            if any(cid not in known for cid, a in zip(trace.concept_ids, active, strict=True) if a):
                return True
        return False

    def _out_of_sample_error(self, traces: Sequence[Trace]) -> float:
        online = self._s.online
        if online is None or not traces:
            return math.nan
        u, a = online.basis, online.operator
        num = den = 0.0
        for trace in traces:
            x = trace.dense(self._s.fit_ids)
            z = u.T @ x
            predicted = u @ (a @ z[:, :-1])
            num += float(np.sum((x[:, 1:] - predicted) ** 2))
            den += float(np.sum(x[:, 1:] ** 2))
        return math.sqrt(num / den) if den > 0 else math.nan

    def _fit_window(self) -> SnapshotWindow | None:
        traces = list(self._s.window)
        if not traces:
            return None
        ids = list(dict.fromkeys(cid for t in traces for cid in t.concept_ids))
        if len(ids) > self._knobs.max_concepts:
            peak: dict[str, float] = {}
            for t in traces:
                for cid, p in zip(t.concept_ids, np.max(t.values, axis=1), strict=True):
                    peak[cid] = max(peak.get(cid, 0.0), float(p))
            ids = sorted(ids, key=lambda c: -peak[c])[: self._knobs.max_concepts]
        try:
            return build_window([t.dense(ids) for t in traces], ids)
        except ValueError:
            return None

    def _refit(self) -> tuple[UpdateKind, str, bool, CouplingsOutcome | None]:
        window = self._fit_window()
        if window is None:
            return "none", "no concept is active (strength > 0.5) in the window yet", False, None
        model, online = self._fit(window, self.rank_in_force)
        raised = False
        previous = self._s.last_fit
        if previous is not None and np.isclose(previous.dt, model.dt):
            self.psi_drift = psi_drift(_dynamic(previous), _dynamic(model)).psi_drift
            policy = RankPolicy(
                self._knobs.rank, self._knobs.rank_high, self._knobs.psi_drift_threshold
            )
            decision = policy.next_rank(self.rank_in_force, self.psi_drift)
            raised = decision.raised
            self.recommended_rank = decision.rank
            if decision.raised and self._knobs.auto_tune:
                log.info(
                    "kcl_rank_raised", psi_drift=self.psi_drift, rank=decision.rank,
                    threshold=self._knobs.psi_drift_threshold,
                )  # fmt: skip
                self.rank_in_force = decision.rank
                model, online = self._fit(window, self.rank_in_force)
        self._s.last_fit = model
        self._s.online = online
        self._s.fit_ids = window.concept_ids
        self.counters.refits += 1
        self.fitted_at = time.time()
        self._serve(model)
        couplings = None
        if self._knobs.auto_couplings:
            try:
                couplings = self.update_couplings(1.0)
            except NotReady as exc:
                log.debug("kcl_couplings_skipped", reason=str(exc))
        return "refit", "", raised, couplings

    def _fit(self, window: SnapshotWindow, rank: int) -> tuple[DmdModel, OnlineDmd]:
        k = self._knobs
        model = fit_dmd(
            window, k.dt_s, rank=rank, forgetting=k.forgetting_factor if k.weight_refits else None
        )
        online = OnlineDmd.from_window(
            model,
            window,
            forgetting=k.forgetting_factor,
            refit_interval=k.refit_interval,
            weighted=k.weight_refits,
        )
        return model, online

    def _serve(self, model: DmdModel) -> None:
        """Serve the L1-selected modes of `model`, amplitudes refit on recent snapshots."""
        k = self._knobs
        window = self._selection_window(model)
        try:
            if window is None:
                raise ValueError("no recent snapshots")
            chosen = select_modes(model, window, strength=k.l1_strength, max_modes=k.max_modes)
            served = chosen.apply(model)
        except ValueError as exc:
            # A window the selection cannot use (e.g. a fast-growing mode overflowing): keep the
            # largest modes by amplitude, still within the cap.
            log.warning("kcl_mode_selection_skipped", reason=str(exc))
            served = model.select(range(min(k.max_modes, model.rank)))
        self._s.served = served

    def _selection_window(self, model: DmdModel) -> SnapshotWindow | None:
        # Unweighted refits select on up to _SELECTION_MAX recent snapshots; weighted ones on
        # about three forgetting lifetimes.
        want = _SELECTION_MAX
        if self._knobs.weight_refits:
            lifetime = 3.0 / max(1e-9, 1 - self._knobs.forgetting_factor)
            want = int(min(_SELECTION_MAX, max(_SELECTION_MIN, lifetime)))
        pieces: list[FloatArray] = []
        for trace in reversed(self._s.window):
            dense = trace.dense(model.concept_ids)
            dense = dense[:, max(0, dense.shape[1] - want) :]
            for start in range(0, dense.shape[1], _SELECTION_PIECE):
                piece = dense[:, start : start + _SELECTION_PIECE + 1]
                if piece.shape[1] >= 2:
                    pieces.append(np.ascontiguousarray(piece))
            want -= dense.shape[1]
            if want <= 0:
                break
        if not pieces:
            return None
        return SnapshotWindow(concept_ids=model.concept_ids, traces=tuple(pieces))

    def _trim_window(self) -> None:
        window = self._s.window
        total = sum(t.n_snapshots for t in window)
        while len(window) > 1 and total > self._knobs.window_snapshots:
            total -= window.popleft().n_snapshots

    # -- couplings -----------------------------------------------------------------------------

    def update_couplings(self, strength: float) -> CouplingsOutcome:
        """Estimate the Kuramoto couplings of the model's concepts from the window's phases.

        Raises:
            NotReady: no model yet, fewer than 2 oscillating concepts, or too few samples.
            ValueError: a bad strength.
        """
        if not math.isfinite(strength) or strength < 0:
            raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
        ids = self._s.fit_ids
        traces = list(self._s.window)
        if not ids or not traces:
            raise NotReady("no model yet; send traces with active concepts first")
        ids = self._oscillator_ids(ids, traces)
        fields = [t.dense_phases(ids) for t in traces]
        source: PhaseSource
        if all(f is not None for f in fields):
            phase_traces = [f for f in fields if f is not None]
            source = "fields"
        else:
            usable = [t.dense(ids) for t in traces if t.n_snapshots >= _MIN_ANALYTIC_SAMPLES]
            if not usable:
                raise NotReady(f"phases need traces of >= {_MIN_ANALYTIC_SAMPLES} snapshots")
            analytic = phases_from_activations(usable)
            keep = np.flatnonzero(analytic.oscillating)
            ids = tuple(ids[i] for i in keep)
            phase_traces = [p[keep] for p in analytic.phases]
            source = "analytic"
        if len(ids) < 2:
            raise NotReady("fewer than 2 oscillating concepts; couplings need at least 2")
        previous = self._s.couplings
        try:
            estimate = estimate_couplings(
                phase_traces, ids, self._knobs.dt_s, strength=strength, previous=previous
            )
        except ValueError as exc:
            raise NotReady(str(exc)) from exc
        self.phase_source = source
        if estimate.status == "unidentifiable":
            self.coupling_status = "unidentifiable"
            self.view = self._make_view()
            return CouplingsOutcome(
                previous,
                "unidentifiable",
                source,
                False,
                "the phases are synchronised (every pair phase-locked or collinear): they carry"
                " no information about the couplings, so the couplings in force are unchanged",
            )
        self._s.couplings = estimate
        self.coupling_status = estimate.status
        self.couplings_version += 1
        self.couplings_updated_at = time.time()
        self.counters.coupling_updates += 1
        self.view = self._make_view()
        message = (
            "every link identifiable"
            if estimate.status == "ok"
            else f"{int(estimate.unidentifiable_links.sum())} phase-locked or collinear links"
            " kept their previous value"
        )
        return CouplingsOutcome(
            estimate, estimate.status, source, True, message,
            estimate.n_clamped, estimate.n_rate_limited,
        )  # fmt: skip

    def _oscillator_ids(self, ids: tuple[str, ...], traces: Sequence[Trace]) -> tuple[str, ...]:
        if len(ids) <= MAX_OSCILLATORS:
            return ids
        variance = np.zeros(len(ids))
        for t in traces:
            variance += np.var(t.dense(ids), axis=1) * t.n_snapshots
        keep = np.sort(np.argsort(-variance)[:MAX_OSCILLATORS])
        return tuple(ids[i] for i in keep)

    # -- view ----------------------------------------------------------------------------------

    def refresh_view(self) -> None:
        self.view = self._make_view()

    def _make_view(self) -> View:
        window = self._s.window
        return View(
            model=self._s.served,
            model_version=self.model_version,
            fitted_at=self.fitted_at,
            rank_in_force=self.rank_in_force,
            recommended_rank=self.recommended_rank,
            psi_drift=self.psi_drift,
            prediction_error=self.prediction_error,
            last_update_seconds=self.last_update_seconds,
            couplings=self._s.couplings,
            coupling_status=self.coupling_status,
            phase_source=self.phase_source,
            couplings_version=self.couplings_version,
            couplings_updated_at=self.couplings_updated_at,
            counters=replace(self.counters),
            cursor=self.cursor,
            window_snapshots=sum(t.n_snapshots for t in window),
            window_traces=len(window),
            pending_stream_snapshots=self._streams.pending_snapshots,
            last_update=self.last_update,
            horizon=max((t.n_snapshots for t in window), default=0),
        )
