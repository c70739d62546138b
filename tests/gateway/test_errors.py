"""Errors a model can act on: every tool's bad arguments, service refusals, services down."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import scrape_until
from tests.gateway.conftest import KEY_A, Stack, mcp_session, text

# (tool, arguments, words the error must contain). Each names the argument and what to do.
BAD_ARGUMENTS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("memory.put", {}, ["nothing to store", "episodeBlob", "concepts"]),
    (
        "memory.put",
        {"concepts": {"concept:dog": 1.5}},
        ["`concepts['concept:dog']`", "from 0 to 1"],
    ),
    ("memory.put", {"concepts": 5}, ["`concepts`", "valid dictionary", "valid list", "(got 5)"]),
    (
        "memory.put",
        {"concepts": ["a"], "colour": "red"},
        ["`colour`", "no such argument", "episodeBlob"],
    ),
    (
        "memory.put",
        {"concepts": ["a"], "activation": {"conceptIds": ["a"], "strengths": [1]}},
        ["`activation`", "once"],
    ),
    ("memory.put", {"timestamp": "yesterday", "concepts": ["a"]}, ["`timestamp`", "ISO 8601"]),
    ("memory.put", {"meta": {"concepts": {"a": "high"}}}, ["`meta.concepts", "valid number"]),
    (
        "memory.put",
        {
            "episodes": [],
        },
        ["`episodes`", "at least one"],
    ),
    ("memory.put", {"episodes": [{"id": "x"}], "tags": ["t"]}, ["`tags`", "either `episodes`"]),
    (
        "memory.put",
        {"id": "bad id!", "concepts": ["a"]},
        ["episodic-vault refused", "'bad id!' is not a valid episode id", "fix that argument"],
    ),
    ("memory.get", {}, ["`id`", "Field required"]),
    ("memory.get", {"id": ""}, ["`id`", "empty"]),
    ("memory.search", {"embedding": [1.0, 0.0, 0.0]}, ["embedding", "has 3 values", "8"]),
    ("memory.search", {"embedding": [1.0] * 8, "k": 0}, ["`k`", "greater than or equal to 1"]),
    ("memory.search", {"embedding": [1.0] * 8, "tier": "HOT"}, ["`tier`", "'STM', 'MTM' or 'LTM'"]),
    ("memory.recall", {"concepts": {}}, ["`concepts`", "empty"]),
    ("memory.recall", {"concepts": ["a"], "since": "last week"}, ["`since`", "ISO 8601"]),
    ("memory.recall", {"concepts": ["a"], "minEnergy": -1}, ["`minEnergy`", "negative"]),
    ("memory.sleep", {"maxEpisodes": 0}, ["`maxEpisodes`", "greater than or equal to 1"]),
    ("memory.sleep", {"minAgeS": 10, "maxAgeS": 5}, ["`maxAgeS`", "below minAgeS"]),
    ("memory.sleep", {"jobId": "j1", "once": True}, ["`jobId`", "leave out"]),
    ("memory.prune", {"tau": -1}, ["`tau`", "greater than 0"]),
    ("memory.prune", {"jobId": "j1", "dryRun": True}, ["`jobId`", "leave out"]),
    ("memory.kcl_status", {"modes": 1000}, ["`modes`", "less than or equal to 100"]),
    ("memory.stats", {"verbose": True}, ["`verbose`", "no such argument"]),
]


def run_calls(url: str, calls: list[tuple[str, dict[str, Any]]]) -> list[tuple[bool, str]]:
    async def go() -> list[tuple[bool, str]]:
        async with mcp_session(url, KEY_A) as client:
            out = []
            for tool, args in calls:
                r = await client.call_tool(tool, args)
                out.append((bool(r.is_error), text(r)))
            return out

    return asyncio.run(go())


class TestBadArguments:
    def test_every_tool_names_the_bad_argument_and_the_fix(self, stack: Stack) -> None:
        """Each bad call is a tool error naming the argument and what to change; nothing stored."""
        gw = stack.gateway()
        results = run_calls(gw.url, [(tool, args) for tool, args, _ in BAD_ARGUMENTS])
        for (tool, args, words), (is_error, message) in zip(BAD_ARGUMENTS, results, strict=True):
            assert is_error, f"{tool} {args} was accepted: {message}"
            assert message.startswith(f"{tool}: "), message
            for w in words:
                assert w in message, f"{tool} {args}: {w!r} not in {message!r}"
        assert stack.vault.count() == 0
        tools = {t for t, _, _ in BAD_ARGUMENTS}
        assert tools == {
            "memory.put", "memory.get", "memory.search", "memory.recall", "memory.sleep", "memory.prune",
            "memory.kcl_status", "memory.stats",
        }  # fmt: skip


class TestServiceFailures:
    def test_a_service_that_is_down_is_named_with_its_address_and_route(self, stack: Stack) -> None:
        """With the learner and pruner not running, their tools say which service is down."""
        gw = stack.gateway()
        settings = gw.settings.services
        results = run_calls(gw.url, [("memory.kcl_status", {}), ("memory.prune", {"dryRun": True})])
        learner = f"koopman-learner at 127.0.0.1:{settings.koopman_learner.port} (primary route)"
        pruner = f"sparse-pruner at 127.0.0.1:{settings.sparse_pruner.port} (primary route)"
        for (is_error, message), name in zip(results, (learner, pruner), strict=True):
            assert is_error and name in message and "is unavailable" in message, message
            assert "tell the operator" in message

    def test_idempotent_reads_are_retried_and_writes_fail_without_storing(
        self, stack: Stack
    ) -> None:
        """A read to a stopped vault is retried max_attempts times, then named as down."""
        gw = stack.gateway(max_attempts=3, retry_backoff_s=0.01)
        stack.vault.server.stop()
        ((is_error, message),) = run_calls(gw.url, [("memory.get", {"id": "x"})])
        assert is_error and "episodic-vault at" in message and "unavailable" in message
        page = scrape_until(gw.metrics_url, "gateway_backend_retries_total{")
        assert (
            'gateway_backend_retries_total{method="GetEpisode",route="primary",'
            'service="episodic_vault"} 2.0' in page
        )
        assert (
            'gateway_tool_calls_total{outcome="unavailable",route="primary",tool="memory.get"} 1.0'
            in page
        )

    @pytest.mark.parametrize("deadline", [0.3])
    def test_a_service_that_hangs_hits_the_deadline_named_in_the_message(
        self, stack: Stack, deadline: float
    ) -> None:
        """A vault that stops answering makes the call fail at gateway.deadlines, named."""
        import os
        import signal
        import subprocess
        import sys
        import time

        from mcp_services.common.health import wait_serving
        from tests.conftest import service_environ

        env = service_environ(stack.tmp / "hung") | {"VAULT_BACKEND": "memory"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_services.episodic_vault.server"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            target = f"127.0.0.1:{env['VAULT_GRPC_PORT']}"
            assert wait_serving(target, 60, alive=lambda: proc.poll() is None)
            os.kill(proc.pid, signal.SIGSTOP)
            gw = stack.gateway(
                canary={"episodic_vault": target},
                canary_percent=100,
                deadlines={"get_s": deadline},
            )
            start = time.monotonic()
            ((is_error, message),) = run_calls(gw.url, [("memory.get", {"id": "x"})])
            assert time.monotonic() - start < 30  # bounded: the call did not hang
            assert is_error, message
            assert f"did not answer within {deadline:g} s (gateway.deadlines.get_s)" in message
            assert f"episodic-vault at {target} (canary route)" in message
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(30)
