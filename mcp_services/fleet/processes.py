"""Start, record and stop the local fleet's processes.

Every process the fleet starts is recorded in <var_dir>/fleet/state.json with its pid and its
kernel start time, so `down` stops exactly what `up` started and never a process that merely
reused a pid. Logs go to <var_dir>/log/<name>.log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_time: int  # field 22 of /proc/<pid>/stat: stable for the life of the process
    argv: list[str]
    log_file: str
    endpoint: str = ""
    metrics: str = ""


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing paren.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_running(rec: ProcessRecord) -> bool:
    if proc_start_time(rec.pid) != rec.start_time:
        return False
    try:  # a zombie (exited, not yet reaped) is not running
        state = Path(f"/proc/{rec.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class FleetState:
    def __init__(self, var_dir: Path) -> None:
        self.dir = var_dir / "fleet"
        self.file = self.dir / "state.json"
        self.log_dir = var_dir / "log"

    def load(self) -> list[ProcessRecord]:
        if not self.file.exists():
            return []
        return [ProcessRecord(**r) for r in json.loads(self.file.read_text())["processes"]]

    def save(self, records: list[ProcessRecord]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": [asdict(r) for r in records]}, indent=2))
        os.replace(tmp, self.file)

    def clear(self) -> None:
        self.file.unlink(missing_ok=True)


def spawn(
    name: str, argv: list[str], env: dict[str, str], log_dir: Path
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start a detached process (own session, so a Ctrl-C in the shell does not reach it)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{name}.log"
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    start = None
    for _ in range(100):  # /proc entry appears at once; retry only for a very busy machine
        start = proc_start_time(proc.pid)
        if start is not None:
            break
        time.sleep(0.01)
    if start is None:
        raise RuntimeError(f"{name}: process {proc.pid} vanished right after start; see {log_file}")
    return proc, ProcessRecord(name, proc.pid, start, argv, str(log_file))


def stop(rec: ProcessRecord, timeout: float) -> str:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns what happened, for the operator."""
    if not is_running(rec):
        return "not running"
    os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(rec):
            return "stopped"
        time.sleep(0.05)
    os.kill(rec.pid, signal.SIGKILL)
    while is_running(rec):
        time.sleep(0.02)
    return f"killed after {timeout:.0f} s"


def tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def python_module_argv(module: str) -> list[str]:
    return [sys.executable, "-m", module]
