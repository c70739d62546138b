"""Canary routing: the share of callers follows the setting, and a caller's side is fixed."""

from __future__ import annotations

import itertools

import pytest

from mcp_services.gateway.keys import Caller
from mcp_services.gateway.routing import route_for

CALLERS = [Caller(key_digest=f"{i:016x}", tenant="").identity for i in range(10_000)]


class TestShare:
    @pytest.mark.parametrize("percent", [0.0, 1.0, 10.0, 33.3, 50.0, 90.0, 100.0])
    def test_share_of_10k_callers_is_within_2_points_of_the_setting(self, percent: float) -> None:
        """Over 10k routed callers the canary share is the setting to within 2 percentage points."""
        on_canary = sum(route_for(c, percent) == "canary" for c in CALLERS)
        assert abs(100 * on_canary / len(CALLERS) - percent) <= 2.0

    def test_zero_and_hundred_are_exact(self) -> None:
        """0% sends nobody to the canary, 100% sends everybody."""
        assert all(route_for(c, 0) == "primary" for c in CALLERS)
        assert all(route_for(c, 100) == "canary" for c in CALLERS)


class TestSticky:
    def test_a_caller_always_lands_on_the_same_side(self) -> None:
        """Routing the same caller again, many times, gives the same route every time."""
        first = [route_for(c, 50) for c in CALLERS[:2000]]
        for _ in range(5):
            assert [route_for(c, 50) for c in CALLERS[:2000]] == first

    def test_raising_the_share_only_moves_callers_onto_the_canary(self) -> None:
        """1% -> 50% -> 100%: whoever was on the canary stays there as the share grows."""
        steps = (1.0, 5.0, 50.0, 100.0)
        sets = [{c for c in CALLERS if route_for(c, p) == "canary"} for p in steps]
        for small, large in itertools.pairwise(sets):
            assert small <= large

    def test_keys_of_one_tenant_share_a_route(self) -> None:
        """Two keys naming the same tenant route as that tenant, whatever the keys are."""
        a = Caller(key_digest="aaaa", tenant="acme")
        b = Caller(key_digest="bbbb", tenant="acme")
        for p in (1.0, 25.0, 50.0, 75.0):
            assert route_for(a.identity, p) == route_for(b.identity, p)
