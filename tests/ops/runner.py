"""Run `tori-ops` as an operator does: a subprocess, with the environment given (None: ours)."""

from __future__ import annotations

import subprocess
import sys


def ops(env: dict[str, str] | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_services.ops", *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
