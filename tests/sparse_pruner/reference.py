"""TEST/BENCH ONLY: the pruning objective handed to liblinear (scikit-learn) as an independent solver.

liblinear's L1-regularised squared-hinge SVM (``LinearSVC(penalty="l1", dual=False)``) minimises
``||w||_1 + C * sum_s c_s * max(0, 1 - y_s a_s . w)^2``. Our objective is
``1/(2n) sum_ik max(0, t_ik - m_ik)^2 + lam ||w||_1`` with ``m_ik = z_ik . w``; for ``t_ik > 0`` each
term equals ``t_ik^2 * max(0, 1 - (z_ik / t_ik) . w)^2``, so dividing by ``lam`` maps it exactly:
one liblinear sample per (concept, training sample), features ``z / t``, weight ``c = t^2`` and
``C = 1 / (2 n lam)``. liblinear needs two classes, so every other sample is negated with its label.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp

# scikit-learn ships no type information; it is only a test/bench reference here.
from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
from sklearn.svm import LinearSVC  # type: ignore[import-untyped]

from mcp_services.sparse_pruner.domain import PruningProblem
from mcp_services.sparse_pruner.domain.graph import FloatArray


def stacked_design(problem: PruningProblem) -> tuple[sp.csr_matrix, FloatArray, FloatArray]:
    """Return ``(A, labels, sample_weights)`` of the liblinear form of ``problem``.

    Raises:
        ValueError: a threshold ``t_ik <= 0`` (that term has no margin-1 form).
    """
    if np.any(problem.thresholds <= 0.0):
        raise ValueError("problem: liblinear's form needs every threshold t_ik > 0")
    n = problem.n_samples
    k = np.arange(n)
    rows, cols, vals = [], [], []
    for a, c in ((problem.edge_i, problem.edge_j), (problem.edge_j, problem.edge_i)):
        rows.append((a[:, None] * n + k[None, :]).ravel())
        cols.append(np.repeat(np.arange(problem.n_edges), n))
        z = problem.targets_t[a] * problem.inputs_t[c]
        vals.append((z / problem.thresholds[a]).ravel())
    n_rows = problem.n_concepts * n
    design = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_rows, problem.n_edges),
    )
    labels = np.ones(n_rows)
    labels[::2] = -1.0
    design = sp.csr_matrix(sp.diags(labels) @ design)
    return design, labels, (problem.thresholds**2).ravel()


def liblinear_solve(
    problem: PruningProblem,
    lam: float,
    tol: float,
    max_iter: int = 100_000,
    cpu_seconds: list[float] | None = None,
) -> tuple[FloatArray, float]:
    """Solve ``problem`` at ``lam`` with liblinear; return ``(weights, wall seconds of the fit)``.

    ``cpu_seconds``, when given, receives the fit's process CPU time (less sensitive than wall
    time to other work on a shared machine).
    """
    design, labels, weights = stacked_design(problem)
    model = LinearSVC(
        penalty="l1",
        loss="squared_hinge",
        dual=False,
        C=1.0 / (2.0 * problem.n_samples * lam),
        fit_intercept=False,
        tol=tol,
        max_iter=max_iter,
        random_state=0,
    )
    start = time.perf_counter()
    cpu_start = time.process_time()
    with warnings.catch_warnings():
        # At tight tolerances liblinear warns about its own iteration cap; the caller certifies
        # the answer with the duality gap instead.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(design, labels, sample_weight=weights)
    seconds = time.perf_counter() - start
    if cpu_seconds is not None:
        cpu_seconds.append(time.process_time() - cpu_start)
    return np.asarray(model.coef_[0], dtype=np.float64), seconds
