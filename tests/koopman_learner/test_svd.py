"""Truncated SVD paths: fast paths agree with LAPACK where they claim to, and fall back otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import truncated_svd
from mcp_services.koopman_learner.domain.arrays import FloatArray


def _low_rank_plus_noise(n: int, m: int, rank: int, noise: float, seed: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    right, _ = np.linalg.qr(rng.standard_normal((m, rank)))
    values = np.linspace(10.0, 1.0, rank)
    return np.asarray((left * values) @ right.T + noise * rng.standard_normal((n, m)))


def _subspace_gap(a: FloatArray, b: FloatArray) -> float:
    """Largest principal-angle sine between the column spaces of a and b."""
    return float(np.linalg.norm(a - b @ (b.T @ a), 2))


class TestAgreement:
    @pytest.mark.parametrize("method", ["gram", "randomized"])
    def test_fast_paths_match_exact_with_a_spectral_gap(self, method: str) -> None:
        """With a gap after the rank, Gram and randomized give LAPACK's triplets to 1e-9."""
        x = _low_rank_plus_noise(200, 1000, 20, 1e-3, seed=1)
        exact = truncated_svd(x, 20, method="exact")
        fast = truncated_svd(x, 20, method=method)  # type: ignore[arg-type]
        assert fast.method == method
        np.testing.assert_allclose(fast.s, exact.s, rtol=1e-9)
        assert _subspace_gap(fast.u, exact.u) < 1e-8

    def test_auto_takes_the_certified_randomized_path_on_large_gapped_data(self) -> None:
        """auto uses randomized when its certificate holds, and the certificate is reported."""
        x = _low_rank_plus_noise(200, 1500, 20, 1e-3, seed=2)
        result = truncated_svd(x, 20)
        assert result.method == "randomized"
        assert result.residual <= 1e-11

    def test_auto_falls_back_to_exact_without_a_gap(self) -> None:
        """On white noise the leading subspace is not resolved quickly, so auto uses LAPACK."""
        x = np.random.default_rng(3).standard_normal((200, 1500))
        result = truncated_svd(x, 20, max_iter=3)
        assert result.method == "exact"

    def test_rank_is_capped_by_numerical_rank(self) -> None:
        """A rank-3 matrix yields 3 triplets even when 10 are asked for."""
        x = _low_rank_plus_noise(40, 60, 3, 0.0, seed=4)
        assert truncated_svd(x, 10, method="exact").rank == 3


class TestErrors:
    def test_zero_matrix_is_rejected(self) -> None:
        """All-zero data has no dynamics and the message says so."""
        with pytest.raises(ValueError, match="all zeros"):
            truncated_svd(np.zeros((5, 5)), 2)

    def test_unknown_method_is_rejected(self) -> None:
        """A typo in the method names the valid choices."""
        with pytest.raises(ValueError, match="one of"):
            truncated_svd(np.ones((5, 5)), 2, method="qr")  # type: ignore[arg-type]

    def test_rank_must_be_positive(self) -> None:
        """rank 0 is rejected with the argument's name."""
        with pytest.raises(ValueError, match="rank"):
            truncated_svd(np.ones((5, 5)), 0)
