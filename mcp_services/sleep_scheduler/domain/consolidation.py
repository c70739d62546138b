"""The consolidation cycle: episodes in, a new graph and the cycle's figures out.

A cycle (DESIGN section 3):

1. **Merge**: the episodes' binary states (plus any rehearsed prototypes of earlier cycles, voting
   with their weights) are clustered, correlated-but-distinct classes split apart
   (:mod:`.split`), and majority-voted into prototypes (:mod:`.prototypes`); a prototype needs
   three confirming episodes, so episodes without structure form none. Rehearsed prototypes no
   new episode joined fade, and drop out below that support (:mod:`.fading`); the cycle's
   ``notes`` say so, and say ``no_structure`` when no episode formed or joined a prototype.
2. **Wake / sleep epochs**: each epoch replays every prototype with ``replay_noise`` of its
   members swapped; the wake statistics are the clamped prototypes, the sleep statistics the
   concepts' responses at the epoch's temperature (:mod:`.wake_sleep`). The temperature is
   annealed epoch by epoch from ``t0`` to ``t_min`` (hot epochs make Hebbian-like updates, cold
   ones perceptron-like margins). ``W += eta dW``, ``b += eta db``.
3. **Stop** when the label-free stability score (noisy episodes settled at T = 0, compared with
   their prototypes: :func:`.quality.stability_score`) has not improved for ``patience``
   evaluations. The graph kept is the best-scoring one seen, including the starting graph, so a
   cycle never lowers that score: repeating cycles on the same episodes cannot make them worse.
4. **Measure**: the mean energy of the replayed prototypes under the old and the kept graph
   (``energy_delta``), and the sleep-phase anneal: the noisy replays annealed from ``t0`` sweep by
   sweep until no concept changes, whose sweep count is the "settle loops" figure.

The service commits ``result.graph`` (bumping its version), marks the episodes consolidated and
may keep ``result.prototypes`` with ``result.prototype_weights`` to rehearse in later cycles, so
new episodes do not overwrite older memories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mcp_services.sleep_scheduler.domain.activations import (
    ConceptActivation,
    activation_of_state,
    index_for,
    states_matrix,
)
from mcp_services.sleep_scheduler.domain.anneal import AnnealSchedule, settle
from mcp_services.sleep_scheduler.domain.fading import (
    DEFAULT_FADE,
    cycle_notes,
    fade_unreinforced,
)
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph, FloatArray
from mcp_services.sleep_scheduler.domain.prototypes import (
    DEFAULT_MERGE_THRESHOLD,
    PrototypeSet,
    merge_episodes,
)
from mcp_services.sleep_scheduler.domain.quality import (
    RECALL_OVERLAP,
    RecallReport,
    stability_score,
)
from mcp_services.sleep_scheduler.domain.wake_sleep import SleepLearner, swap_noise

RECALLED = RECALL_OVERLAP
"""Stability recall at which the graph already holds a cycle's episodes: nothing to learn."""

EpochHook = Callable[[int, int, float], None]
"""``on_epoch(epoch, max_epochs, temperature)`` after each sleep epoch; raising aborts the cycle."""


@dataclass(frozen=True)
class ConsolidationConfig:
    """Knobs of one cycle (defaults are the service's).

    Args:
        t0: starting relative temperature of the sleep epochs and of the sleep anneal (> 0).
        eta: learning rate (> 0); relative to the weights' scale, since the rule is scale-free.
        t_min: final relative temperature of the sleep epochs, in (0, t0].
        temperature_decay: per-epoch temperature factor in (0, 1).
        anneal_decay: per-sweep temperature factor of the sleep anneal in (0, 1).
        replay_noise: share of a replay's active concepts swapped, in [0, 1).
        merge_threshold: phi needed to merge an episode into a prototype, in (0, 1).
        max_epochs: cap on sleep epochs (>= 1).
        eval_every: epochs between stability evaluations (>= 1).
        patience: evaluations without improvement before stopping (>= 1).
        max_validation: cap on the episodes settled per evaluation (>= 1).
        anneal_sample: replays annealed from ``t0`` for the settle-loop figure (>= 1).
        fade: factor on the weight of a rehearsed prototype no episode of the cycle reinforced,
            in [0, 1]; one that falls below the support a prototype needs is dropped.
        seed: seeds every random choice of the cycle.

    Raises:
        ValueError: naming the first field out of range.
    """

    t0: float = 2.0
    eta: float = 0.01
    t_min: float = 0.3
    temperature_decay: float = 0.9
    anneal_decay: float = 0.85
    replay_noise: float = 0.1
    merge_threshold: float = DEFAULT_MERGE_THRESHOLD
    max_epochs: int = 400
    eval_every: int = 5
    patience: int = 6
    max_validation: int = 1024
    anneal_sample: int = 64
    fade: float = DEFAULT_FADE
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("t0", self.t0 > 0.0, "> 0, e.g. 2.0"),
            ("eta", self.eta > 0.0, "> 0, e.g. 0.01"),
            ("t_min", 0.0 < self.t_min <= self.t0, "in (0, t0], e.g. 0.3"),
            ("temperature_decay", 0.0 < self.temperature_decay < 1.0, "in (0, 1), e.g. 0.9"),
            ("anneal_decay", 0.0 < self.anneal_decay < 1.0, "in (0, 1), e.g. 0.85"),
            ("replay_noise", 0.0 <= self.replay_noise < 1.0, "in [0, 1), e.g. 0.1"),
            ("merge_threshold", 0.0 < self.merge_threshold < 1.0, "in (0, 1), e.g. 0.3"),
            ("max_epochs", self.max_epochs >= 1, ">= 1"),
            ("eval_every", self.eval_every >= 1, ">= 1"),
            ("patience", self.patience >= 1, ">= 1"),
            ("max_validation", self.max_validation >= 1, ">= 1"),
            ("anneal_sample", self.anneal_sample >= 1, ">= 1"),
            ("fade", 0.0 <= self.fade <= 1.0, "in [0, 1], e.g. 0.9 (1: never fade)"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)} is out of range: use {fix}")


def relative_energy(graph: ConceptGraph, states: sp.csr_matrix) -> FloatArray:
    """Energy of each state row minus the mean energy of random states with as many actives.

    The plain {0, 1} energy of a pattern moves with the overall level of W and b (a graph that
    makes every member's field positive can still give its patterns positive energy when the
    biases are strongly negative), so its change across graphs mixes that level in. Against the
    mean over random states of the same activity (for ``k`` actives out of ``N``,
    ``E_rand = -1/2 q 1^T W 1 - p b^T 1`` with ``p = k/N``, ``q = k(k-1)/(N(N-1))``) it measures
    how far below the landscape the pattern lies: negative = a valley, deeper = more negative.
    Costs O(nnz(W)) once plus the energies of the rows.
    """
    n = graph.size
    k = np.asarray(states.sum(axis=1)).ravel()
    p = k / max(n, 1)
    q = k * (k - 1) / max(n * (n - 1), 1)
    e_rand = -0.5 * q * float(graph.weights.sum()) - p * float(graph.biases.sum())
    return np.asarray(graph.energy(states) - e_rand, dtype=np.float64)


@dataclass(frozen=True)
class CycleStats:
    """Figures of one consolidation cycle (what metrics and events report).

    Energies are means over the replayed prototypes (weighted by their episode counts) of
    :func:`relative_energy` (the pattern's energy below random states of its activity), in the
    graph's energy units; ``energy_delta = energy_after - energy_before`` (negative = deeper).
    ``energy_drop`` is ``-energy_delta / |energy_before|`` (1.0 from an empty graph that got
    deeper, 0.0 if nothing changed). Scores are :attr:`RecallReport.score` of the stability measure.
    ``learned`` is False when the cycle had nothing to learn (no new episode formed or joined a
    prototype, or the graph already recalled them): the tuning rules then advise nothing.
    ``notes`` are ``"<cause>: <explanation>"`` lines (:func:`.fading.cycle_notes`).
    """

    episodes_processed: int
    prototypes: int
    epochs_run: int
    epoch_kept: int
    energy_before: float
    energy_after: float
    energy_delta: float
    energy_drop: float
    settle_loops: int
    settled: bool
    t0: float
    eta: float
    stability_before: RecallReport
    stability_after: RecallReport
    edges_before: int
    edges_after: int
    sleep_error_rate: float
    prototypes_faded: int = 0
    episodes_unassigned: int = 0
    learned: bool = True
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsolidationResult:
    """A cycle's output: the graph to commit, the prototypes to rehearse and the figures."""

    graph: ConceptGraph
    prototypes: tuple[ConceptActivation, ...]
    prototype_weights: tuple[float, ...]
    stats: CycleStats


@dataclass(frozen=True)
class StatesResult:
    """:func:`consolidate_states` output: like :class:`ConsolidationResult`, as state matrices."""

    graph: ConceptGraph
    prototypes: PrototypeSet
    stats: CycleStats


def consolidate(
    graph: ConceptGraph,
    episodes: Sequence[ConceptActivation],
    config: ConsolidationConfig | None = None,
    rehearsal: Sequence[ConceptActivation] = (),
    rehearsal_weights: Sequence[float] | None = None,
    on_epoch: EpochHook | None = None,
) -> ConsolidationResult:
    """Run one consolidation cycle of ``episodes`` into ``graph`` (the service's entry point).

    Args:
        graph: the current committed graph (its index grows by the episodes' new concepts).
        episodes: unconsolidated episodes, one activation each (a trace: pass its frames).
        config: knobs; defaults when None.
        rehearsal: prototypes of earlier cycles to replay alongside (may be empty).
        rehearsal_weights: vote weight of each rehearsal prototype (default 1.0 each).
        on_epoch: called after every sleep epoch as ``on_epoch(epoch, max_epochs, temperature)``;
            an exception it raises aborts the cycle (the service's cancellation and progress).

    Returns:
        The new graph (same version number: the service assigns the next one), the merged
        prototypes as activations with their weights, and :class:`CycleStats`.

    Raises:
        ValueError: if ``rehearsal_weights`` does not match ``rehearsal`` or the config is bad.
    """
    if rehearsal_weights is not None and len(rehearsal_weights) != len(rehearsal):
        raise ValueError(
            f"rehearsal_weights has {len(rehearsal_weights)} entries for {len(rehearsal)} "
            "rehearsal prototypes: pass one weight per prototype"
        )
    index = index_for([*episodes, *rehearsal], graph.index)
    grown = graph.resized(index)
    out = consolidate_states(
        grown,
        states_matrix(episodes, index),
        config,
        states_matrix(rehearsal, index),
        None if rehearsal_weights is None else np.asarray(rehearsal_weights, dtype=np.float64),
        on_epoch,
    )
    protos = tuple(
        activation_of_state(out.prototypes.states[i], index) for i in range(out.prototypes.count)
    )
    return ConsolidationResult(
        out.graph, protos, tuple(float(w) for w in out.prototypes.weights), out.stats
    )


def consolidate_states(
    graph: ConceptGraph,
    episodes: sp.csr_matrix,
    config: ConsolidationConfig | None = None,
    rehearsal: sp.csr_matrix | None = None,
    rehearsal_weights: FloatArray | None = None,
    on_epoch: EpochHook | None = None,
) -> StatesResult:
    """:func:`consolidate` on binary state matrices over ``graph.index`` (E, N) and (R, N).

    For callers that already hold states (benchmarks, bulk jobs); skips activation objects.
    """
    cfg = ConsolidationConfig() if config is None else config
    rng = np.random.default_rng(cfg.seed)
    n = graph.size
    eps = sp.csr_matrix(episodes, dtype=np.float64)
    reh = sp.csr_matrix((0, n)) if rehearsal is None else sp.csr_matrix(rehearsal)
    if eps.shape[1] != n or reh.shape[1] != n:
        raise ValueError(f"episodes and rehearsal must have {n} columns (the graph's index size)")
    rw = np.ones(reh.shape[0]) if rehearsal_weights is None else rehearsal_weights
    protos = merge_episodes(
        sp.vstack([eps, reh], format="csr"),
        cfg.merge_threshold,
        np.concatenate([np.ones(eps.shape[0]), rw]),
    )
    protos, faded = fade_unreinforced(protos, eps.shape[0], cfg.fade)
    replays, weights = protos.states, protos.weights
    notes = cycle_notes(protos, eps.shape[0], faded)

    # Validation cues: real noisy episodes (the learning rule itself only sees prototypes).
    n_eps = eps.shape[0]
    # Episodes that joined no prototype (seen once, like nothing else) validate nothing.
    owned = np.flatnonzero(protos.assignment[:n_eps] >= 0)
    if len(owned):
        pick = np.sort(rng.choice(owned, size=min(len(owned), cfg.max_validation), replace=False))
        cues, targets = eps[pick], replays[protos.assignment[pick]]
    else:
        pick = np.arange(min(replays.shape[0], cfg.max_validation))
        pool = np.unique(replays.indices).astype(np.int64)
        cues, targets = swap_noise(replays[pick], cfg.replay_noise, pool, rng), replays[pick]
    eval_seed = cfg.seed + 1

    before = stability_score(graph, cues, targets, eval_seed)
    # Something to learn: new episodes formed or reinforced a prototype that the graph does not
    # already recall. Otherwise a small energy drop says nothing about the temperature.
    learned = bool(len(owned)) and before.recall < RECALLED
    best, best_graph, best_epoch = before, graph, 0
    learner = SleepLearner(graph, replays, weights, cfg.replay_noise)
    stale, epoch, error_rate = 0, 0, 0.0
    while replays.shape[0] and epoch < cfg.max_epochs and stale < cfg.patience:
        epoch += 1
        temperature = max(cfg.t_min, cfg.t0 * cfg.temperature_decay ** (epoch - 1))
        error_rate = learner.epoch(temperature, cfg.eta, rng)
        if on_epoch is not None:
            on_epoch(epoch, cfg.max_epochs, temperature)
        if epoch % cfg.eval_every == 0:
            current = learner.graph()
            report = stability_score(current, cues, targets, eval_seed)
            # ">=" keeps the newest of equally good graphs; only a strict gain resets patience.
            improved = report.score > best.score
            if report.score >= best.score:
                best, best_graph, best_epoch = report, current, epoch
            stale = 0 if improved else stale + 1

    w_norm = weights / max(weights.sum(), 1e-300)
    e_before = float(relative_energy(graph, replays) @ w_norm) if replays.shape[0] else 0.0
    e_after = float(relative_energy(best_graph, replays) @ w_norm) if replays.shape[0] else 0.0
    delta = e_after - e_before
    drop = -delta / abs(e_before) if e_before != 0.0 else 1.0 if delta < 0 else 0.0

    # The sleep-phase anneal of the noisy replays, from t0 down, for the settle-loop figure.
    pool = np.unique(replays.indices).astype(np.int64)
    # A bounded sample: a hot anneal spreads over the graph, so each replay can cost O(N), and the
    # sweep count of 64 replays already reads the same as that of thousands.
    sample = replays[: cfg.anneal_sample]
    anneal = settle(
        best_graph,
        swap_noise(sample, cfg.replay_noise, pool, rng),
        AnnealSchedule(t0=cfg.t0, decay=cfg.anneal_decay),
        rng,
        best_graph.field_scales(learner.activity),
    )
    stats = CycleStats(
        episodes_processed=n_eps,
        prototypes=protos.count,
        epochs_run=epoch,
        epoch_kept=best_epoch,
        energy_before=e_before,
        energy_after=e_after,
        energy_delta=delta,
        energy_drop=drop,
        settle_loops=anneal.sweeps,
        settled=anneal.settled,
        t0=cfg.t0,
        eta=cfg.eta,
        stability_before=before,
        stability_after=best,
        edges_before=graph.edge_count,
        edges_after=best_graph.edge_count,
        sleep_error_rate=error_rate,
        prototypes_faded=faded,
        episodes_unassigned=n_eps - len(owned),
        learned=learned,
        notes=notes
        if learned or notes
        else ("already_stored: the graph recalled these episodes before the cycle",),
    )
    return StatesResult(best_graph, protos, stats)
