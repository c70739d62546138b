"""A native fleet on private ports, for soak runs and the observability test.

`make up` with its own var dir and free ports: the same processes, Redis and start order, so a
load run or a test never touches the operator's fleet on the standard ports. The gateway gets a
key of its own and a 50% canary whose addresses are the same services, so both routes carry
traffic and the dashboards' canary split has data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mcp_services.fleet.processes import FleetState, ProcessRecord, is_running

PORT_VARS = {
    "episodic-vault": ("VAULT_GRPC_PORT", "VAULT_METRICS_PORT"),
    "sleep-scheduler": ("SLEEP_GRPC_PORT", "SLEEP_METRICS_PORT"),
    "sparse-pruner": ("PRUNER_GRPC_PORT", "PRUNER_METRICS_PORT"),
    "koopman-learner": ("KOOPMAN_GRPC_PORT", "KOOPMAN_METRICS_PORT"),
    "mcp-gateway": ("GATEWAY_PORT", "GATEWAY_METRICS_PORT"),
}
CANARY_VARS = {
    "episodic-vault": "CANARY_VAULT_ADDR",
    "sleep-scheduler": "CANARY_SLEEP_ADDR",
    "sparse-pruner": "CANARY_PRUNER_ADDR",
    "koopman-learner": "CANARY_KOOPMAN_ADDR",
}
GATEWAY_KEY = "loadgen-native-key"


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all bound at once, so none is handed out twice)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class NativeFleet:
    var_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(init=False)
    ports: dict[str, tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        keep = ("TORI_", "VAULT_", "REDIS_", "SLEEP_", "PRUNE", "KCL_", "KOOPMAN_", "GATEWAY_",
                "CANARY_", "FLEET_")  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(keep)}
        numbers = free_ports(2 * len(PORT_VARS) + 1)
        self.ports = {}
        for i, (name, (grpc_var, metrics_var)) in enumerate(PORT_VARS.items()):
            self.ports[name] = (numbers[2 * i], numbers[2 * i + 1])
            env[grpc_var], env[metrics_var] = str(numbers[2 * i]), str(numbers[2 * i + 1])
        env.update(
            {
                "TORI_ENV": "local",
                "TORI_VAR_DIR": str(self.var_dir),
                "FLEET_REDIS_PORT": str(numbers[-1]),
                "GATEWAY_API_KEYS": f"{GATEWAY_KEY} loadgen",
                "CANARY_PERCENT": "50",
                "LOG_LEVEL": "warning",
            }
        )
        for name, var in CANARY_VARS.items():
            env[var] = self.target(name)
        env.update(self.extra_env)
        self.env = env

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name][0]}"

    def metrics_target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name][1]}"

    def _fleet(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mcp_services.fleet", command],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def up(self, timeout: float = 240.0) -> None:
        proc = self._fleet("up", timeout)
        if proc.returncode != 0:
            self.down()
            raise RuntimeError(f"fleet up failed:\n{proc.stdout}\n{proc.stderr}")

    def down(self) -> str:
        return self._fleet("down", 120).stdout

    def processes(self) -> list[ProcessRecord]:
        return [r for r in FleetState(self.var_dir).load() if is_running(r)]

    def rss(self) -> dict[str, int]:
        return {r.name: rss_bytes(r.pid) for r in self.processes()}

    def loadgen_args(self) -> list[str]:
        return [
            f"--vault={self.target('episodic-vault')}",
            f"--scheduler={self.target('sleep-scheduler')}",
            f"--pruner={self.target('sparse-pruner')}",
            f"--learner={self.target('koopman-learner')}",
            f"--vault-metrics={self.metrics_target('episodic-vault')}",
            f"--pid-file={self.var_dir / 'loadgen' / 'pid'}",
            f"--stop-file={self.var_dir / 'loadgen' / 'stop'}",
        ]
