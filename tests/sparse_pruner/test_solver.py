"""Tests of the certified L1 solver against liblinear and its own optimality conditions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.sparse_pruner.domain import (
    PruningProblem,
    build_problem,
    kernels,
    lambda_max,
    relative_lambda,
    solve_l1,
)
from mcp_services.sparse_pruner.domain.objective import certificate, loss, margins

from .planted import correlated_patterns, projection_graph, random_patterns
from .reference import liblinear_solve

TOL = 1e-6


def _random_problem(seed: int = 1) -> PruningProblem:
    xi = random_patterns(6, 60, seed)
    return build_problem(projection_graph(xi), xi, noisy_copies=2, seed=seed)


def _correlated_problem(seed: int = 2) -> PruningProblem:
    xi = correlated_patterns(8, 60, seed)
    return build_problem(projection_graph(xi), xi, noisy_copies=1, seed=seed)


def _biased_problem(seed: int = 3) -> PruningProblem:
    xi = random_patterns(6, 50, seed)
    # Biases well inside the margin keep every threshold positive (liblinear's form needs it).
    biases = 0.05 * np.random.default_rng(seed).standard_normal(50)
    return build_problem(projection_graph(xi, biases=biases, density=0.5), xi, noisy_copies=2)


def _objective(problem: PruningProblem, w: np.ndarray, lam: float) -> float:
    return certificate(problem, w, lam, margins(problem, w), lambda_max(problem)).primal


class TestOptimality:
    """The solution is certified by its duality gap and matches liblinear's objective."""

    @pytest.mark.parametrize(
        ("make", "tau"),
        [
            (_random_problem, 0.05),
            (_random_problem, 0.3),
            (_correlated_problem, 0.05),
            (_correlated_problem, 0.3),
            (_biased_problem, 0.1),
        ],
        ids=["random-0.05", "random-0.3", "correlated-0.05", "correlated-0.3", "biased-0.1"],
    )
    def test_gap_and_reference_objective(self, make: object, tau: float) -> None:
        """Relative duality gap <= 1e-6 and |P - P_liblinear| / P <= 1e-6."""
        assert callable(make)
        problem = make()
        assert isinstance(problem, PruningProblem)
        lam, _ = relative_lambda(problem, tau)
        solution = solve_l1(problem, lam, tol=TOL)
        assert solution.converged
        assert solution.certificate.relative_gap <= TOL
        ref_w, _ = liblinear_solve(problem, lam, tol=1e-10)
        ref_obj = _objective(problem, ref_w, lam)
        ours = solution.certificate.primal
        assert abs(ours - ref_obj) <= TOL * ours
        # The certificate is a lower bound on every feasible objective, liblinear's included.
        assert solution.certificate.dual <= ref_obj * (1.0 + 1e-12)

    def test_gap_bounds_suboptimality_at_any_point(self) -> None:
        """At an arbitrary point, primal - dual >= primal - optimum >= 0."""
        problem = _random_problem()
        lam, lmax = relative_lambda(problem, 0.1)
        optimum = solve_l1(problem, lam, tol=1e-9).certificate.primal
        rng = np.random.default_rng(0)
        for _ in range(5):
            w = 0.05 * rng.standard_normal(problem.n_edges)
            cert = certificate(problem, w, lam, margins(problem, w), lmax)
            assert cert.gap >= cert.primal - optimum - 1e-12
            assert cert.primal >= optimum - 1e-12

    def test_warm_start_reaches_same_optimum(self) -> None:
        """A warm start from a different tau's solution certifies the same objective."""
        problem = _correlated_problem()
        lam, lmax = relative_lambda(problem, 0.1)
        cold = solve_l1(problem, lam, tol=TOL)
        other = solve_l1(problem, 0.3 * lmax, tol=TOL)
        warm = solve_l1(problem, lam, tol=TOL, initial=other.weights)
        assert warm.converged
        assert (
            abs(warm.certificate.primal - cold.certificate.primal)
            <= 2 * TOL * cold.certificate.primal
        )


class TestLambdaScale:
    """tau is a fraction of lambda_max: tau = 1 zeros every edge, smaller tau keeps some."""

    def test_tau_one_prunes_everything(self) -> None:
        """At lam = lambda_max the certified optimum is w = 0."""
        problem = _random_problem()
        lam, _ = relative_lambda(problem, 1.0)
        assert not np.any(solve_l1(problem, lam, tol=TOL).weights)

    def test_smaller_tau_keeps_more_edges(self) -> None:
        """The number of nonzero edges grows as tau shrinks."""
        problem = _random_problem()
        counts = []
        for tau in (0.9, 0.3, 0.05):
            lam, _ = relative_lambda(problem, tau)
            counts.append(int(np.count_nonzero(solve_l1(problem, lam, tol=TOL).weights)))
        assert counts[0] < counts[1] < counts[2]

    def test_tau_is_invariant_to_weight_scale(self) -> None:
        """Scaling the graph's weights scales lam but leaves the kept edge set unchanged."""
        xi = random_patterns(6, 60, 4)
        graph = projection_graph(xi)
        scaled = projection_graph(xi)
        scaled.weights.data *= 1000.0
        kept = []
        for g in (graph, scaled):
            problem = build_problem(g, xi)
            lam, _ = relative_lambda(problem, 0.1)
            kept.append(solve_l1(problem, lam, tol=TOL).weights != 0.0)
        np.testing.assert_array_equal(kept[0], kept[1])


class TestRefit:
    """lam = 0 is the unpenalised refit, certified by its KKT residual."""

    def test_refit_reaches_stationarity(self) -> None:
        """The refit's gradient vanishes to the tolerance, relative to lambda_max."""
        problem = _random_problem()
        lam, _ = relative_lambda(problem, 0.2)
        sparse = solve_l1(problem, lam, tol=TOL)
        sub = problem.restrict(sparse.weights != 0.0)
        refit = solve_l1(sub, 0.0, tol=TOL, initial=sparse.weights[sparse.weights != 0.0])
        assert refit.converged
        assert refit.certificate.kkt_residual <= TOL
        assert refit.certificate.primal <= _objective(
            sub, sparse.weights[sparse.weights != 0.0], 0.0
        )


class TestScreening:
    """Gap-safe screening removes only edges that are zero at the optimum."""

    def test_screened_edges_are_zero(self) -> None:
        """Edges the solver screened out are zero in a tighter independent solve too.

        The correlated instance has duplicate columns, so the primal optimum is not unique and
        the two solvers may split weight differently between twins; gap-safe screening is a
        statement about every optimum, so it is checked edge by edge, and the supports are
        compared only through the objective.
        """
        problem = _correlated_problem()
        lam, _ = relative_lambda(problem, 0.3)
        solution = solve_l1(problem, lam, tol=TOL)
        ref_w, _ = liblinear_solve(problem, lam, tol=1e-10)
        screened = solution.screened_mask
        assert int(np.count_nonzero(screened)) == solution.screened > 0
        assert np.all(solution.weights[screened] == 0.0)
        scale = float(np.max(np.abs(ref_w)))
        assert np.max(np.abs(ref_w[screened])) <= 1e-6 * scale
        ours = _objective(problem, solution.weights, lam)
        theirs = _objective(problem, ref_w, lam)
        assert ours <= theirs * (1.0 + 1e-6)


class TestKernels:
    """The compiled kernels agree with independent numpy/scipy forms of the same quantities."""

    def test_margins_match_sparse_product(self) -> None:
        """m = y * (W x) from the edge list equals scipy's product with the symmetric matrix."""
        problem = _biased_problem()
        w = np.random.default_rng(5).standard_normal(problem.n_edges)
        n = problem.n_concepts
        upper = sp.coo_matrix((w, (problem.edge_i, problem.edge_j)), shape=(n, n))
        expected = np.asarray((upper + upper.T) @ problem.inputs_t) * problem.targets_t
        np.testing.assert_allclose(margins(problem, w), expected, rtol=1e-12, atol=1e-12)

    def test_sweep_descends_and_keeps_margins_consistent(self) -> None:
        """Each sweep lowers the objective and leaves m equal to the margins of the new w."""
        problem = _correlated_problem()
        lam, _ = relative_lambda(problem, 0.1)
        w = 0.05 * np.random.default_rng(6).standard_normal(problem.n_edges)
        m = margins(problem, w)
        order = np.random.default_rng(7).permutation(problem.n_edges)
        before = _objective(problem, w, lam)
        for _ in range(3):
            kernels.cd_sweep(
                problem.edge_i,
                problem.edge_j,
                order,
                problem.inputs_t,
                problem.targets_t,
                problem.thresholds,
                w,
                m,
                lam,
            )
            after = _objective(problem, w, lam)
            assert after < before
            before = after
        np.testing.assert_allclose(m, margins(problem, w), rtol=1e-10, atol=1e-10)

    def test_sweep_minimises_a_single_coordinate(self) -> None:
        """Swept alone, an edge lands no worse than a fine grid search of its 1-D objective."""
        problem = _random_problem()
        lam, _ = relative_lambda(problem, 0.1)
        w = 0.02 * np.random.default_rng(8).standard_normal(problem.n_edges)
        e = int(np.argmax(np.abs(w)))
        start = _objective(problem, w, lam)
        grid = w[e] + np.linspace(-0.5, 0.5, 2001)
        values = []
        for value in grid:
            trial = w.copy()
            trial[e] = value
            values.append(loss(problem, margins(problem, trial)) + lam * np.abs(trial).sum())
        m = margins(problem, w)
        for _ in range(20):  # repeated 1-D steps converge to the coordinate's minimiser
            kernels.cd_sweep(
                problem.edge_i,
                problem.edge_j,
                np.array([e]),
                problem.inputs_t,
                problem.targets_t,
                problem.thresholds,
                w,
                m,
                lam,
            )
        assert _objective(problem, w, lam) <= min(min(values), start) + 1e-12


class TestSolverArguments:
    """Bad arguments raise ValueError naming the argument."""

    @pytest.mark.parametrize(
        ("lam", "tol", "name"),
        [(-1.0, 1e-6, "lam"), (np.inf, 1e-6, "lam"), (np.nan, 1e-6, "lam"), (0.1, 0.0, "tol")],
    )
    def test_bad_scalars(self, lam: float, tol: float, name: str) -> None:
        """Negative or non-finite lam, or non-positive tol, is refused."""
        with pytest.raises(ValueError, match=name):
            solve_l1(_random_problem(), lam, tol=tol)

    def test_bad_initial_shape(self) -> None:
        """A warm start of the wrong length is refused."""
        with pytest.raises(ValueError, match="initial"):
            solve_l1(_random_problem(), 0.1, initial=np.zeros(3))

    def test_non_finite_initial(self) -> None:
        """A warm start holding NaN or inf is refused (the compiled sweep assumes finite data)."""
        problem = _random_problem()
        for bad in (np.nan, np.inf):
            initial = np.zeros(problem.n_edges)
            initial[3] = bad
            with pytest.raises(ValueError, match="initial"):
                solve_l1(problem, 0.1, initial=initial)

    def test_tau_out_of_range(self) -> None:
        """tau outside [0, 1] is refused."""
        with pytest.raises(ValueError, match="tau"):
            relative_lambda(_random_problem(), 1.5)
