"""Tests of the weekly graph-growth tuning rule."""

from __future__ import annotations

import pytest

from mcp_services.sparse_pruner.domain import tuned_tau, weekly_growth


class TestTunedTau:
    """Growth above 5% per week raises tau by x1.5, capped at 1."""

    def test_fast_growth_raises_tau(self) -> None:
        """8%/week multiplies tau by 1.5."""
        assert tuned_tau(0.1, 0.08) == pytest.approx(0.15)

    def test_growth_at_the_limit_keeps_tau(self) -> None:
        """Exactly 5%/week (and less) leaves tau alone."""
        assert tuned_tau(0.1, 0.05) == 0.1
        assert tuned_tau(0.1, -0.2) == 0.1

    def test_tau_never_exceeds_one(self) -> None:
        """tau is a fraction of lambda_max, so the rule stops at 1."""
        assert tuned_tau(0.9, 0.5) == 1.0

    @pytest.mark.parametrize(
        ("args", "kwargs", "name"),
        [
            ((0.0, 0.1), {}, "tau"),
            ((0.1, float("nan")), {}, "growth_per_week"),
            ((0.1, 0.1), {"factor": 1.0}, "factor"),
            ((0.1, 0.1), {"growth_limit": -0.1}, "growth_limit"),
        ],
    )
    def test_bad_arguments(
        self, args: tuple[float, float], kwargs: dict[str, float], name: str
    ) -> None:
        """Out-of-range arguments raise ValueError naming them."""
        with pytest.raises(ValueError, match=name):
            tuned_tau(*args, **kwargs)


class TestWeeklyGrowth:
    """Growth is the compounded relative edge growth per week."""

    def test_one_week(self) -> None:
        """1000 -> 1100 edges over 7 days is 10%/week."""
        assert weekly_growth(1000, 1100, 7.0) == pytest.approx(0.10)

    def test_two_weeks_compound(self) -> None:
        """21% over 14 days is 10%/week compounded."""
        assert weekly_growth(1000, 1210, 14.0) == pytest.approx(0.10)

    @pytest.mark.parametrize(
        ("args", "name"),
        [
            ((0, 10, 7.0), "edges_before"),
            ((10, -1, 7.0), "edges_now"),
            ((10, 10, 0.0), "elapsed_days"),
        ],
    )
    def test_bad_arguments(self, args: tuple[int, int, float], name: str) -> None:
        """Out-of-range arguments raise ValueError naming them."""
        with pytest.raises(ValueError, match=name):
            weekly_growth(*args)
