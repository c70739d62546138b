"""What the forgetting factor weighs: refits are unweighted unless weight_refits is on; online
updates always discount, and stay within 1e-12 of the batch fit under the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import build_window, fit_dmd, weighted_operator
from mcp_services.koopman_learner.domain.learner import Learner
from mcp_services.koopman_learner.domain.online_dmd import forgetting_weights
from mcp_services.koopman_learner.domain.synthetic import oscillator_system, simulate
from mcp_services.koopman_learner.domain.traces import Trace
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig

N, DT, RHO = 8, 0.1, 0.95
IDS = tuple(f"c{i}" for i in range(N))
SYSTEM = oscillator_system(N, [0.4, 1.1], [-0.02, -0.05], DT, seed=11)


def _traces(seed: int, count: int, length: int) -> list[Trace]:
    arrays = simulate(
        SYSTEM, n_traces=count, length=length, seed=seed, offset=0.5, amplitudes=[0.2, 0.1],
        noise=0.01,
    )  # fmt: skip
    return [Trace(IDS, np.ascontiguousarray(a), None) for a in arrays]


def _learner(weight_refits: bool) -> Learner:
    return Learner(
        KoopmanLearnerConfig(
            dt_s=DT,
            forgetting_factor=RHO,
            weight_refits=weight_refits,
            auto_couplings=False,
            rank=6,
        )
    )


def _matched(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.min(np.abs(a[:, None] - b[None, :]), axis=1)))


class TestRefitWeighting:
    @pytest.mark.parametrize("weight_refits", [False, True])
    def test_a_refit_is_the_batch_fit_with_the_configured_weights(
        self, weight_refits: bool
    ) -> None:
        """weight_refits off: the refit's eigenvalues are the unweighted fit's (1e-10), and differ
        from the forgetting-weighted fit; on: they are the weighted fit's."""
        learner = _learner(weight_refits)
        traces = _traces(1, 2, 150)
        assert learner.process_traces(traces).kind == "refit"
        window = build_window([t.values for t in traces], IDS)
        plain = fit_dmd(window, DT, rank=6)
        weighted = fit_dmd(window, DT, rank=6, forgetting=RHO)
        fit = learner.state().last_fit
        assert fit is not None
        same, other = (weighted, plain) if weight_refits else (plain, weighted)
        assert _matched(fit.eigenvalues, same.eigenvalues) < 1e-10
        assert _matched(fit.eigenvalues, other.eigenvalues) > 1e-6

    @pytest.mark.parametrize("weight_refits", [False, True])
    def test_online_updates_stay_within_1e_12_of_the_batch_fit_with_the_same_weights(
        self, weight_refits: bool
    ) -> None:
        """After a refit of 2 traces, 3 more traces update online; the operator equals the batch
        least squares of every pair where each new pair discounts all earlier ones by rho and the
        refit's pairs start at weight 1 (off) or rho^age (on): relative gap <= 1e-12."""
        learner = _learner(weight_refits)
        first, more = _traces(2, 2, 120), _traces(3, 3, 60)
        learner.process_traces(first)
        assert learner.process_traces(more).kind == "online"
        online = learner.state().online
        assert online is not None
        window = build_window([t.values for t in first], IDS)
        x0, y0 = window.pairs()
        new = build_window([t.values for t in more], IDS)
        x1, y1 = new.pairs()
        m = x1.shape[1]
        start = forgetting_weights(x0.shape[1], RHO) if weight_refits else np.ones(x0.shape[1])
        weights = np.concatenate([start * RHO**m, forgetting_weights(m, RHO)])
        x, y = np.concatenate([x0, x1], axis=1), np.concatenate([y0, y1], axis=1)
        reference, _ = weighted_operator(online.basis, x, y, RHO, weights)
        gap = np.linalg.norm(online.operator - reference) / np.linalg.norm(reference)
        assert gap <= 1e-12
