"""Pruning settings: the tuning knobs of one run, validated at construction.

Scales (why the defaults keep a meaning as the graph grows):

* ``tau`` is a fraction of ``lambda_max``, the smallest L1 strength that zeros every edge of the
  current graph; ``lam = tau * lambda_max``. ``tau = 1`` prunes everything, ``tau -> 0`` keeps the
  sparsest graph that still meets every margin. An absolute 0.001 would be below one Hebbian step
  and prune nothing on one graph and everything on another.
  Measured on planted-pattern graphs (N = 200, P = 20): ``tau = 0.001``, ``0.05`` and ``0.1``
  prune about the same (77%, 81%, 85% of edges, recall kept), but small ``tau`` is the near-LP
  regime where the penalised problem is ill-conditioned and solve time grows about as ``1 / tau``
  (274 s at 0.001 against 2 s at 0.1), hence the default 0.1. ``0.001`` stays valid and means
  "close to the sparsest graph that keeps every margin".
* ``l1_threshold`` is a fraction of the RMS of the graph's nonzero weights: after the L1 solve,
  edges with ``|w| < l1_threshold * rms(W)`` are dropped as numerically zero.
* ``margin`` scales each concept's required field relative to its current mean ``|h_i|`` on the
  prototypes, so the pruned graph keeps the field and energy scale of the one it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PruneSettings:
    """Knobs of one pruning run (all validated; ``ValueError`` names the field and the fix).

    Attributes:
        tau: L1 strength as a fraction of ``lambda_max``, in ``(0, 1]``. Default 0.1 (see
            the module docstring for why not 0.001).
        l1_threshold: drop edges below this fraction of the weight RMS, in ``[0, 1)``.
        max_quality_drop: largest allowed recall drop, in ``[0, 1]``. Default 0.05.
        retention_target: keep at least this fraction of the edges, in ``[0, 1]``.
        max_edges_to_prune: remove at most this many edges in one run (``None``: no cap).
        max_backoffs: times the guard backs off before refusing, ``>= 0``.
        min_tau: back-offs halve ``tau`` only down to this (relative); further ones only halve
            the removal budget. Default 0.01: below it solves slow down about as ``1 / tau``.
        margin: required field relative to the current mean ``|h_i|``, ``> 0``.
        noisy_copies: corrupted copies of each prototype in the loss, ``>= 0``.
        train_noise: fraction of entries flipped in those copies, in ``[0, 0.5)``.
        cue_noise: fraction flipped in the recall cues of the guard, in ``[0, 0.5)``.
        overlap_threshold: overlap at which a cue counts as recalled, in ``(0, 1]``.
        cues_per_pattern: recall cues per prototype, ``>= 1``.
        min_cues: the guard settles at least this many cues in all, raising ``cues_per_pattern``
            for graphs with few prototypes, ``>= 0``. Default 200: the standard error of a
            recall figure is then at most 0.035 (``0.5 / sqrt(200)``) and that of a 5% drop
            about 0.016, so ``max_quality_drop`` = 0.05 stays above the noise.
        tol: relative duality gap the L1 solve must certify, in ``(0, 0.1]``.
        max_sweeps: solver budget in full coordinate sweeps, ``>= 1``.
        seed: seed of the solver's noisy copies (runs are reproducible). The guard's cues and
            update orders are seeded by the prototypes themselves (``guard.cue_seed``).
    """

    tau: float = 0.1
    l1_threshold: float = 1e-3
    max_quality_drop: float = 0.05
    retention_target: float = 0.1
    max_edges_to_prune: int | None = None
    max_backoffs: int = 6
    min_tau: float = 0.01
    margin: float = 1.0
    noisy_copies: int = 2
    train_noise: float = 0.1
    cue_noise: float = 0.1
    overlap_threshold: float = 0.95
    cues_per_pattern: int = 5
    min_cues: int = 200
    tol: float = 1e-6
    max_sweeps: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0.0 < self.tau <= 1.0, "tau", "in (0, 1], a fraction of lambda_max", self.tau)
        _check(0.0 <= self.l1_threshold < 1.0, "l1_threshold", "in [0, 1)", self.l1_threshold)
        _check(
            0.0 <= self.max_quality_drop <= 1.0,
            "max_quality_drop",
            "in [0, 1]",
            self.max_quality_drop,
        )
        _check(
            0.0 <= self.retention_target <= 1.0,
            "retention_target",
            "in [0, 1]",
            self.retention_target,
        )
        if self.max_edges_to_prune is not None:
            _check(
                self.max_edges_to_prune >= 0,
                "max_edges_to_prune",
                ">= 0 or None",
                self.max_edges_to_prune,
            )
        _check(self.max_backoffs >= 0, "max_backoffs", ">= 0", self.max_backoffs)
        _check(0.0 < self.min_tau <= 1.0, "min_tau", "in (0, 1]", self.min_tau)
        _check(self.margin > 0.0, "margin", "> 0", self.margin)
        _check(self.noisy_copies >= 0, "noisy_copies", ">= 0", self.noisy_copies)
        _check(0.0 <= self.train_noise < 0.5, "train_noise", "in [0, 0.5)", self.train_noise)
        _check(0.0 <= self.cue_noise < 0.5, "cue_noise", "in [0, 0.5)", self.cue_noise)
        _check(
            0.0 < self.overlap_threshold <= 1.0,
            "overlap_threshold",
            "in (0, 1]",
            self.overlap_threshold,
        )
        _check(self.cues_per_pattern >= 1, "cues_per_pattern", ">= 1", self.cues_per_pattern)
        _check(self.min_cues >= 0, "min_cues", ">= 0", self.min_cues)
        _check(0.0 < self.tol <= 0.1, "tol", "in (0, 0.1]", self.tol)
        _check(self.max_sweeps >= 1, "max_sweeps", ">= 1", self.max_sweeps)


def _check(ok: bool, name: str, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name}: must be {expected}, got {value!r}")
