"""KoopmanLearner numerics against PyDMD, with noise curves and online-update costs.

Figures:

* ``fit``: exact DMD at rank 50 of a 2000 x 5000 snapshot matrix (25 damped oscillations, 50
  eigenvalues, 0.1% noise), each SVD path of ours against ``pydmd.DMD(svd_rank=50)`` on the same
  snapshots: wall time (best of N), speed-up, and the largest distance between matched
  eigenvalues (the speed-up only counts at equal eigenvalues).
* ``noise_curve``: eigenvalue, frequency (Hz) and growth-rate (1/s) errors against the truth as
  measurement noise rises (median over seeds), at the true rank, and the number of modes the
  sparse selection keeps from an over-ranked fit.
* ``online``: microseconds per rank-1 update at n = 2000, r = 50, against a full refit of a
  1000-snapshot window; how far 10k streamed updates end from the forgetting-weighted batch fit.
* ``spdmd`` and ``couplings``: time of a mode selection at rank 50 and of a coupling estimate
  for N = 100 oscillators from 2000 samples (with its precision, recall and worst error).

Run: ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_koopman.py [--quick]``
(one thread, so the figures do not depend on what else the machine runs); writes
bench/results/koopman.json and prints it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mcp_services.koopman_learner.domain import (
    OnlineDmd,
    build_window,
    estimate_couplings,
    fit_dmd,
    select_modes,
    simulate_kuramoto,
    weighted_operator,
)
from mcp_services.koopman_learner.domain.arrays import ComplexArray, FloatArray
from mcp_services.koopman_learner.domain.kuramoto import random_network
from mcp_services.koopman_learner.domain.synthetic import oscillator_system, simulate

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results" / "koopman.json"
DT = 0.05


def _best_of(repeats: int, action: Callable[[], T]) -> tuple[float, T]:
    """(fastest wall time in seconds, last result) over `repeats` >= 1 runs."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = action()
        timings.append(time.perf_counter() - start)
    return min(timings), result


def _matched(a: ComplexArray, b: ComplexArray) -> float:
    """Largest distance from an eigenvalue of either set to the nearest of the other."""
    distance = np.abs(a[:, None] - b[None, :])
    return float(max(np.min(distance, axis=1).max(), np.min(distance, axis=0).max()))


def _large_snapshots(n: int, m: int, seed: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    frequencies = np.sort(rng.uniform(0.05, 9.0, 25)).tolist()
    growth = rng.uniform(-0.002, 0.0, 25).tolist()
    system = oscillator_system(n, frequencies, growth, DT, seed=seed)
    (trace,) = simulate(system, n_traces=1, length=m, seed=seed + 1, noise=1e-3)
    return trace


def bench_fit(quick: bool) -> dict[str, Any]:
    """Our SVD paths vs PyDMD's DMD on one 2000 x 5000 trace at rank 50."""
    pydmd = importlib.import_module("pydmd")  # untyped peer, test/bench-only dependency
    n, m, rank = (1000, 2500, 50) if quick else (2000, 5000, 50)
    trace = _large_snapshots(n, m, seed=1)
    ids = [f"c{i}" for i in range(n)]
    window = build_window([trace], ids, active_threshold=-np.inf)
    repeats = 1 if quick else 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydmd_seconds, reference = _best_of(repeats, lambda: pydmd.DMD(svd_rank=rank).fit(trace))
    reference_eigs = np.asarray(reference.eigs)
    row: dict[str, Any] = {
        "snapshots": [n, m],
        "rank": rank,
        "pydmd_seconds": round(pydmd_seconds, 4),
        "ours": {},
    }
    for method in ("auto", "randomized", "gram", "exact"):
        seconds, model = _best_of(
            3 if method != "exact" else repeats,
            functools.partial(fit_dmd, window, DT, rank=rank, svd_method=method),
        )
        eigs = model.eigenvalues
        row["ours"][method] = {
            "seconds": round(seconds, 4),
            "speedup_vs_pydmd": round(pydmd_seconds / seconds, 2),
            "max_eigenvalue_gap_vs_pydmd": _matched(eigs, reference_eigs),
            "svd_path": model.svd_method,
        }
    return row


def bench_noise_curve(quick: bool) -> list[dict[str, Any]]:
    """Errors against the truth as noise grows (12 true eigenvalues, 100 concepts)."""
    frequencies = [0.3, 0.8, 1.4, 2.1, 3.0, 4.2]
    growth = [-0.05, 0.0, -0.1, 0.02, -0.2, -0.03]
    system = oscillator_system(100, frequencies, growth, DT, seed=7)
    truth = system.eigenvalues
    true_continuous = np.log(truth) / DT
    ids = [f"c{i}" for i in range(100)]
    seeds = range(2) if quick else range(5)
    rows = []
    for relative_noise in (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1):
        eig, freq, grow, kept = [], [], [], []
        for seed in seeds:
            clean = simulate(system, n_traces=3, length=300, seed=seed)
            scale = float(np.sqrt(np.mean(np.concatenate(clean, axis=1) ** 2)))
            rng = np.random.default_rng(100 + seed)
            traces = [t + relative_noise * scale * rng.standard_normal(t.shape) for t in clean]
            window = build_window(traces, ids, active_threshold=-np.inf)
            model = fit_dmd(window, DT, rank=truth.size)
            nearest = np.argmin(np.abs(truth[:, None] - model.eigenvalues[None, :]), axis=1)
            found = model.eigenvalues[nearest]
            continuous = np.log(found) / DT
            eig.append(float(np.max(np.abs(found - truth))))
            freq.append(float(np.max(np.abs(continuous.imag - true_continuous.imag)) / (2 * np.pi)))
            grow.append(float(np.max(np.abs(continuous.real - true_continuous.real))))
            wide = fit_dmd(window, DT, rank=40)
            kept.append(select_modes(wide, window, strength=0.01).n_selected)
        rows.append(
            {
                "noise_relative_to_signal_rms": relative_noise,
                "max_eigenvalue_error": statistics.median(eig),
                "max_frequency_error_hz": statistics.median(freq),
                "max_growth_rate_error_per_s": statistics.median(grow),
                "modes_kept_from_rank_40_at_strength_0.01": statistics.median(kept),
                "true_modes": int(truth.size),
            }
        )
    return rows


def bench_online(quick: bool) -> dict[str, Any]:
    """Cost of one rank-1 update against a refit, and agreement after 10k updates."""
    n, rank, stream_length = (1000, 50, 3000) if quick else (2000, 50, 10_000)
    trace = _large_snapshots(n, 1001 + stream_length, seed=3)
    ids = [f"c{i}" for i in range(n)]
    start = build_window([trace[:, :1001]], ids, active_threshold=-np.inf)
    refit_seconds, model = _best_of(3, lambda: fit_dmd(start, DT, rank=rank))
    refit_exact_seconds, _ = _best_of(1, lambda: fit_dmd(start, DT, rank=rank, svd_method="exact"))
    online = OnlineDmd.from_window(model, start, forgetting=0.98)
    stream = trace[:, 1000:]
    began = time.perf_counter()
    online.update_trace(stream)
    per_update_trace = (time.perf_counter() - began) / (stream.shape[1] - 1)
    single = OnlineDmd.from_window(model, start, forgetting=0.98)
    calls = 2000
    began = time.perf_counter()
    for t in range(calls):
        single.update(stream[:, t], stream[:, t + 1])
    per_update_call = (time.perf_counter() - began) / calls
    whole = build_window([trace], ids, active_threshold=-np.inf)
    x, y = whole.pairs()
    reference, _ = weighted_operator(online.basis, x, y, 0.98)
    in_basis = float(np.linalg.norm(online.operator - reference) / np.linalg.norm(reference))
    return {
        "concepts": n,
        "rank": rank,
        "updates_streamed": int(stream.shape[1] - 1),
        "microseconds_per_update_in_update_trace": round(per_update_trace * 1e6, 2),
        "microseconds_per_update_call": round(per_update_call * 1e6, 2),
        "refit_seconds_1000_snapshots_auto": round(refit_seconds, 4),
        "refit_seconds_1000_snapshots_exact": round(refit_exact_seconds, 4),
        "refit_over_update_cost": round(refit_seconds / per_update_call),
        "relative_operator_gap_vs_weighted_batch_same_basis": in_basis,
    }


def bench_spdmd_and_couplings(quick: bool) -> dict[str, Any]:
    """Time of one sparse selection at rank 50 and one coupling estimate (N = 100)."""
    n, m = (1000, 2500) if quick else (2000, 5000)
    trace = _large_snapshots(n, m, seed=1)
    window = build_window([trace], [f"c{i}" for i in range(n)], active_threshold=-np.inf)
    model = fit_dmd(window, DT, rank=50)
    spdmd_seconds, chosen = _best_of(3, lambda: select_modes(model, window, strength=0.01))
    network = random_network(
        100, mean_in_degree=5, coupling_range=(0.1, 0.4), omega_range=(-3.0, 3.0), seed=1
    )
    rng = np.random.default_rng(5)
    runs = [
        simulate_kuramoto(
            network.couplings,
            network.omega,
            rng.uniform(0, 2 * np.pi, 100),
            dt=DT,
            steps=199,
            noise=0.01,
            seed=run,
        )
        for run in range(10)
    ]
    ids = [f"c{i}" for i in range(100)]
    coupling_seconds, estimate = _best_of(
        1 if quick else 3, lambda: estimate_couplings(runs, ids, DT)
    )
    found = estimate.couplings
    truth = network.couplings
    hits = (found > 0) & (truth > 0)
    return {
        "spdmd": {
            "snapshots": [n, m],
            "rank": 50,
            "seconds": round(spdmd_seconds, 4),
            "modes_kept_at_strength_0.01": chosen.n_selected,
            "true_modes": 50,
        },
        "couplings": {
            "oscillators": 100,
            "samples": 2000,
            "true_links": int(np.count_nonzero(truth)),
            "seconds": round(coupling_seconds, 4),
            "precision": float(hits.sum() / max((found > 0).sum(), 1)),
            "recall": float(hits.sum() / (truth > 0).sum()),
            "max_relative_error": float(np.max(np.abs(found[hits] - truth[hits]) / truth[hits])),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    args = parser.parse_args()
    importlib.import_module("pydmd")  # fail early when the test/bench-only peer is missing

    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "quick": args.quick,
        "fit": bench_fit(args.quick),
        "noise_curve": bench_noise_curve(args.quick),
        "online": bench_online(args.quick),
        **bench_spdmd_and_couplings(args.quick),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
