"""Exact DMD: known eigenvalues in physical units, PyDMD agreement, trace boundaries, options."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import build_window, fit_dmd, one_step_residual
from mcp_services.koopman_learner.domain.arrays import ComplexArray
from mcp_services.koopman_learner.domain.synthetic import oscillator_system, simulate

DT = 0.05
FREQUENCIES = [0.5, 1.3, 2.0, 0.0]  # Hz
GROWTH = [-0.1, 0.05, -0.3, -0.2]  # 1/s


def _ids(n: int) -> list[str]:
    return [f"concept:{i}" for i in range(n)]


def _match(found: ComplexArray, truth: ComplexArray) -> float:
    """Largest distance from each true eigenvalue to the nearest found one."""
    return float(np.max(np.min(np.abs(truth[:, None] - found[None, :]), axis=1)))


class TestKnownSystem:
    system = oscillator_system(40, FREQUENCIES, GROWTH, DT, seed=1)

    def test_noise_free_eigenvalues_are_recovered_to_1e_8(self) -> None:
        """On noise-free data of a linear system DMD returns its 7 eigenvalues to 1e-8."""
        traces = simulate(self.system, n_traces=3, length=100, seed=2)
        model = fit_dmd(build_window(traces, _ids(40), active_threshold=-1.0), DT)
        assert model.rank == 7
        assert _match(model.eigenvalues, self.system.eigenvalues) < 1e-8

    def test_frequencies_and_growth_rates_are_in_hertz_and_per_second(self) -> None:
        """Each true (f, g) pair appears as arg(lambda)/(2 pi dt) and ln|lambda|/dt."""
        traces = simulate(self.system, n_traces=3, length=100, seed=2)
        model = fit_dmd(build_window(traces, _ids(40), active_threshold=-1.0), DT)
        pairs = sorted(
            (round(abs(f), 9), round(g, 9))
            for f, g in zip(model.frequencies_hz, model.growth_rates, strict=True)
        )
        expected = sorted(
            [(f, g) for f, g in zip(FREQUENCIES, GROWTH, strict=True) for _ in range(2 if f else 1)]
        )
        np.testing.assert_allclose(np.array(pairs), np.array(expected), atol=1e-7)

    def test_damping_ratio_matches_its_definition(self) -> None:
        """zeta = -g / sqrt(g^2 + (2 pi f)^2) for each mode."""
        traces = simulate(self.system, n_traces=3, length=100, seed=2)
        model = fit_dmd(build_window(traces, _ids(40), active_threshold=-1.0), DT)
        omega = 2 * np.pi * model.frequencies_hz
        expected = -model.growth_rates / np.hypot(model.growth_rates, omega)
        np.testing.assert_allclose(model.damping_ratios, expected, atol=1e-12)

    def test_amplitudes_of_persistent_modes_are_their_size(self) -> None:
        """An undamped oscillation of amplitude 0.7 has modal amplitude 0.7 (both halves)."""
        system = oscillator_system(30, [0.8, 1.6], [0.0, 0.0], DT, seed=5)
        traces = simulate(system, n_traces=1, length=400, seed=6, amplitudes=[0.7, 0.2])
        model = fit_dmd(build_window(traces, _ids(30), active_threshold=-1.0), DT)
        np.testing.assert_allclose(model.amplitudes, [0.7, 0.7, 0.2, 0.2], rtol=0.02)

    def test_exact_modes_span_the_true_modes(self) -> None:
        """Each recovered mode is parallel to a true mode (|cosine| = 1 to 1e-8)."""
        traces = simulate(self.system, n_traces=3, length=100, seed=2)
        model = fit_dmd(build_window(traces, _ids(40), active_threshold=-1.0), DT)
        found = model.modes / np.linalg.norm(model.modes, axis=0)
        cosine = np.abs(self.system.modes.conj().T @ found)
        np.testing.assert_allclose(np.max(cosine, axis=1), 1.0, atol=1e-8)

    def test_joining_traces_would_corrupt_the_fit_but_windows_do_not(self) -> None:
        """Separate traces fit exactly; pasting them into one series does not."""
        traces = simulate(self.system, n_traces=3, length=30, seed=7)
        separate = fit_dmd(build_window(traces, _ids(40), active_threshold=-1.0), DT)
        joined = fit_dmd(
            build_window([np.concatenate(traces, axis=1)], _ids(40), active_threshold=-1.0), DT
        )
        assert _match(separate.eigenvalues, self.system.eigenvalues) < 1e-8
        assert (
            one_step_residual(separate, build_window(traces, _ids(40), active_threshold=-1)) < 1e-10
        )
        assert _match(joined.eigenvalues, self.system.eigenvalues) > 1e-3


class TestAgainstPyDmd:
    def _data(self) -> list[np.ndarray]:
        system = oscillator_system(60, [0.3, 0.9, 1.7, 2.6, 3.4], [-0.05] * 5, DT, seed=11)
        return simulate(system, n_traces=1, length=300, seed=12, noise=0.05)

    @pytest.mark.parametrize("rank", [6, 10, 25])
    def test_eigenvalues_match_pydmd_to_1e_8(self, rank: int) -> None:
        """Same snapshots and rank: the eigenvalues equal PyDMD's DMD to 1e-8."""
        pydmd = pytest.importorskip("pydmd")
        (trace,) = self._data()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = pydmd.DMD(svd_rank=rank, exact=True).fit(trace).eigs
        model = fit_dmd(build_window([trace], _ids(60), active_threshold=-1.0), DT, rank=rank)
        assert model.rank == rank
        assert _match(model.eigenvalues, np.asarray(reference)) < 1e-8
        assert _match(np.asarray(reference), model.eigenvalues) < 1e-8

    def test_tikhonov_matches_pydmd_after_converting_units(self) -> None:
        """tikhonov * s_1^2 is PyDMD's tikhonov_regularization * ||X||_F."""
        pydmd = pytest.importorskip("pydmd")
        (trace,) = self._data()
        x = trace[:, :-1]
        s1 = np.linalg.norm(x, 2)
        ours = 1e-3
        theirs = ours * s1**2 / np.linalg.norm(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = pydmd.DMD(svd_rank=10, tikhonov_regularization=theirs).fit(trace).eigs
        model = fit_dmd(
            build_window([trace], _ids(60), active_threshold=-1.0), DT, rank=10, tikhonov=ours
        )
        assert _match(model.eigenvalues, np.asarray(reference)) < 1e-8

    def test_tikhonov_shrinks_eigenvalues(self) -> None:
        """The ridge term pulls the spectral radius inward."""
        (trace,) = self._data()
        window = build_window([trace], _ids(60), active_threshold=-1.0)
        plain = fit_dmd(window, DT, rank=10)
        ridged = fit_dmd(window, DT, rank=10, tikhonov=1e-2)
        assert np.max(np.abs(ridged.eigenvalues)) < np.max(np.abs(plain.eigenvalues))


class TestFastPaths:
    @pytest.mark.parametrize("method", ["gram", "randomized", "auto"])
    def test_fast_svd_paths_give_the_exact_eigenvalues(self, method: str) -> None:
        """On long noisy windows every SVD path yields the exact path's eigenvalues to 1e-8."""
        system = oscillator_system(200, np.linspace(0.1, 4.0, 10).tolist(), [0.0] * 10, DT, seed=3)
        traces = simulate(system, n_traces=2, length=1000, seed=4, noise=1e-3)
        window = build_window(traces, _ids(200), active_threshold=-1.0)
        exact = fit_dmd(window, DT, rank=20, svd_method="exact")
        fast = fit_dmd(window, DT, rank=20, svd_method=method)  # type: ignore[arg-type]
        assert _match(fast.eigenvalues, exact.eigenvalues) < 1e-8
        if method == "auto":
            assert fast.svd_method == "randomized"


class TestForgetting:
    def test_forgetting_follows_a_change_of_dynamics(self) -> None:
        """With strong forgetting the fit reports the recent system's frequency."""
        old = oscillator_system(20, [1.0], [0.0], DT, seed=1)
        new = oscillator_system(20, [2.0], [0.0], DT, seed=1)
        first = simulate(old, n_traces=1, length=200, seed=1)[0]
        second = simulate(new, n_traces=1, length=200, seed=2)[0]
        window = build_window([first, second], _ids(20), active_threshold=-1.0)
        model = fit_dmd(window, DT, rank=2, forgetting=0.9)
        np.testing.assert_allclose(np.abs(model.frequencies_hz), 2.0, atol=1e-6)


class TestErrors:
    def test_non_positive_dt_is_rejected(self) -> None:
        """dt must be a positive number of seconds."""
        window = build_window([np.eye(3)], ["a", "b", "c"])
        with pytest.raises(ValueError, match="dt"):
            fit_dmd(window, 0.0)

    def test_tikhonov_outside_unit_interval_is_rejected(self) -> None:
        """The scale-free ridge lives in [0, 1]."""
        window = build_window([np.eye(3)], ["a", "b", "c"])
        with pytest.raises(ValueError, match="tikhonov"):
            fit_dmd(window, 1.0, tikhonov=2.0)

    def test_select_rejects_out_of_range_indices(self) -> None:
        """Restricting to a missing mode names the valid range."""
        system = oscillator_system(10, [1.0], [0.0], DT, seed=1)
        window = build_window(
            simulate(system, n_traces=1, length=20, seed=1), _ids(10), active_threshold=-1
        )
        model = fit_dmd(window, DT)
        with pytest.raises(ValueError, match="mode indices"):
            model.select([5])
