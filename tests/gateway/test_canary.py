"""Canary routing end to end: two vaults, callers split by the setting, changed without restart."""

from __future__ import annotations

import time
from pathlib import Path

from mcp_services.gateway.keys import digest
from mcp_services.gateway.routing import bucket
from tests.conftest import scrape_until
from tests.gateway.conftest import Stack, call, text


def keys_on_each_side(n: int) -> tuple[list[str], list[str]]:
    """Keys (with no tenant) whose callers fall below and above the 50% line."""
    low: list[str] = []
    high: list[str] = []
    i = 0
    while len(low) < n or len(high) < n:
        key = f"tori_canary_test_key_{i:08d}"
        b = bucket(f"key:{digest(key)[:16]}")
        (low if b < 5000 else high).append(key)
        i += 1
    return low[:n], high[:n]


class TestCanaryRouting:
    def test_callers_split_by_the_setting_and_it_changes_without_restart(
        self, stack: Stack, tmp_path: Path
    ) -> None:
        """At 50% the callers below the line use the canary vault, the rest the primary; writing
        100% to the runtime file moves everyone to the canary with no restart; each route has its
        own metrics."""
        canary = stack.start_vault()
        low, high = keys_on_each_side(3)
        runtime = tmp_path / "runtime.yaml"
        runtime.write_text("canary_percent: 50\n")
        gw = stack.gateway(
            api_keys=low + high,
            canary={"episodic_vault": canary.target},
            runtime_file=str(runtime),
            reload_interval_s=0.05,
        )
        for i, key in enumerate(low + high):
            for j in range(2):  # the same caller twice: it stays on its side
                r = call(gw.url, key, "memory.put", {"id": f"k{i}-{j}", "concepts": ["concept:x"]})
                assert not r.is_error, text(r)
        assert canary.count() == 2 * len(low)
        assert stack.vault.count() == 2 * len(high)

        runtime.write_text("canary_percent: 100\n")
        deadline = time.monotonic() + 30
        while (
            gw.running.gateway is not None
            and gw.running.gateway.live.current.cfg.canary_percent != 100
        ):
            assert time.monotonic() < deadline, "the runtime file was not picked up"
            time.sleep(0.05)
        r = call(gw.url, high[0], "memory.put", {"id": "after", "concepts": ["concept:x"]})
        assert not r.is_error, text(r)
        assert canary.count() == 2 * len(low) + 1
        assert stack.vault.count() == 2 * len(high)

        page = scrape_until(gw.metrics_url, "gateway_canary_percent 100.0")
        assert "gateway_canary_percent 100.0" in page
        assert 'gateway_tool_calls_total{outcome="ok",route="canary",tool="memory.put"} 7.0' in page
        assert (
            'gateway_tool_calls_total{outcome="ok",route="primary",tool="memory.put"} 6.0' in page
        )
        assert (
            'gateway_backend_calls_total{code="OK",method="PutEpisodes",route="canary",service="episodic_vault"} 7.0'
            in page
        )

    def test_an_invalid_runtime_file_is_refused_and_the_old_setting_kept(
        self, stack: Stack, tmp_path: Path
    ) -> None:
        """canary_percent: 150, or a key that needs a restart, is refused; routing stays as it was."""
        runtime = tmp_path / "runtime.yaml"
        runtime.write_text("canary_percent: 10\n")
        gw = stack.gateway(runtime_file=str(runtime))
        assert gw.running.gateway is not None
        live = gw.running.gateway.live
        for bad in ("canary_percent: 150\n", "port: 9999\n", "canary_percent: [\n"):
            runtime.write_text(bad)
            assert not gw.reload()
            assert live.current.cfg.canary_percent == 10
        page = scrape_until(gw.metrics_url, 'gateway_config_reloads_total{outcome="refused"} 3.0')
        assert 'gateway_config_reloads_total{outcome="refused"} 3.0' in page
