"""tori-loadgen: drive the fleet at a target rate, then check that nothing acknowledged was lost.

    tori-loadgen --rate 200 --duration 10m --sleep-every 60s --prune-every 120s --learn-every 10s
    tori-loadgen --soak                  # 24 hours (the soak test of the deployment guide)
    tori-loadgen --stop                  # end a running loadgen cleanly (`make soak-stop`)

Progress goes to stderr every --progress-every; the summary (JSON) to stdout and --summary-file.
SIGINT or SIGTERM, or the stop file appearing, ends the load; the run then verifies every
acknowledged episode (a second signal skips that). Targets default to the configured services.
Exit codes: 0 no errors and nothing lost, 1 errors or lost episodes, 2 bad usage.

Against a vault whose tiers evict (vault.tiers.*.max_items), `--retention` (default: from the
configuration) says which missing episodes are evictions rather than losses (see retention.py);
the vault's pruned count is read from `--vault-metrics`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.clients import ClientFactory, metrics_address
from mcp_services.common.config import ConfigError, load_config, resolve_path
from mcp_services.common.config_schema import Settings
from mcp_services.fleet.processes import proc_start_time
from mcp_services.loadgen.retention import RETENTIONS, retention_of
from mcp_services.loadgen.runner import LoadConfig, LoadRun, Targets, UnsupportedOperation
from mcp_services.loadgen.runner import check_supported as _check_supported
from mcp_services.loadgen.workload import MixError, Workload, parse_mix

SOAK_S = 24 * 3600.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """ "90", "90s", "10m", "24h" -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m or 24h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tori-loadgen", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="operations per second (200)")
    p.add_argument("--duration", type=parse_duration, default=60.0, help="e.g. 90s, 10m (60s)")
    p.add_argument("--soak", action="store_true", help="run for 24 hours")
    p.add_argument(
        "--mix", default="put=60,get=25,search=10,recall=5", help="weights of put/get/search/recall"
    )
    p.add_argument("--sleep-every", type=parse_duration, default=0.0, help="consolidation (0: off)")
    p.add_argument("--prune-every", type=parse_duration, default=0.0, help="pruning (0: off)")
    p.add_argument("--learn-every", type=parse_duration, default=0.0, help="learner batch (0: off)")
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--timeout", type=parse_duration, default=10.0, help="per call (10s)")
    p.add_argument("--trigger-timeout", type=parse_duration, default=300.0)
    p.add_argument("--progress-every", type=parse_duration, default=10.0)
    p.add_argument("--no-verify", action="store_true", help="skip reading every put back")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--run-id", default=None, help="prefix of this run's episode ids")
    p.add_argument("--embedding-dim", type=int, default=None, help="default: vault.embedding_dim")
    p.add_argument("--summary-file", type=Path, default=None)
    for name in ("vault", "scheduler", "pruner", "learner"):
        p.add_argument(f"--{name}", default=None, help=f"{name} host:port (default: configured)")
    p.add_argument(
        "--vault-metrics", default=None, help="vault metrics host:port (default: configured)"
    )
    p.add_argument(
        "--retention",
        choices=("auto", *RETENTIONS),
        default="auto",
        help="what the vault may evict: all kept, consolidated, any (auto: from vault.tiers)",
    )
    p.add_argument("--api-key", help="the fleet's key (default: TORI_API_KEY, else the key file)")
    p.add_argument("--pid-file", type=Path, default=None, help="default: <var>/loadgen/pid")
    p.add_argument("--stop-file", type=Path, default=None, help="default: <var>/loadgen/stop")
    p.add_argument("--stop", action="store_true", help="stop the running loadgen and exit")
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"tori-loadgen: {msg}", file=sys.stderr)
    return code


def _validate(args: argparse.Namespace) -> str | None:
    if not 0 < args.rate <= 100_000:
        return f"--rate must be in (0, 100000] operations per second, got {args.rate}"
    if args.duration <= 0:
        return "--duration must be > 0"
    if not 1 <= args.max_in_flight <= 10_000:
        return f"--max-in-flight must be 1..10000, got {args.max_in_flight}"
    if args.timeout <= 0 or args.trigger_timeout <= 0 or args.progress_every <= 0:
        return "--timeout, --trigger-timeout and --progress-every must be > 0"
    if args.embedding_dim is not None and args.embedding_dim < 0:
        return "--embedding-dim must be >= 0"
    if args.run_id is not None and not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", args.run_id
    ):
        return "--run-id must be 1-41 letters, digits, '.', '_' or '-', starting alphanumeric"
    return None


def _files(args: argparse.Namespace, settings: Settings) -> tuple[Path, Path]:
    base = resolve_path(settings.paths.var_dir) / "loadgen"
    return args.pid_file or base / "pid", args.stop_file or base / "stop"


def _running_pid(pid_file: Path) -> int | None:
    """The pid in the file when that process is still the loadgen that wrote it."""
    try:
        pid_text, start_text = pid_file.read_text().split()
        pid, start = int(pid_text), int(start_text)
    except (OSError, ValueError):
        return None
    return pid if proc_start_time(pid) == start else None


def stop_running(pid_file: Path, stop_file: Path, wait_s: float = 600.0) -> int:
    """Ask a running loadgen to stop (stop file + SIGTERM) and wait until it has verified and
    exited. The stop file alone also reaches a loadgen in another container sharing the volume."""
    stop_file.parent.mkdir(parents=True, exist_ok=True)
    stop_file.touch()
    pid = _running_pid(pid_file)
    if pid is None:
        print(f"no running loadgen recorded in {pid_file}; left {stop_file} for one that polls it")
        return 0
    os.kill(pid, signal.SIGTERM)
    print(f"loadgen pid {pid}: stopping (it verifies what it wrote, then exits)")
    deadline = time.monotonic() + wait_s
    while _running_pid(pid_file) == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    if _running_pid(pid_file) == pid:
        return _fail(f"loadgen pid {pid} still running after {wait_s:.0f} s", 1)
    print(f"loadgen pid {pid}: stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_config()
    except ConfigError as exc:
        return _fail(str(exc))
    pid_file, stop_file = _files(args, settings)
    if args.stop:
        return stop_running(pid_file, stop_file)
    problem = _validate(args)
    if problem:
        return _fail(problem)
    try:
        mix = parse_mix(args.mix)
    except MixError as exc:
        return _fail(str(exc))
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    run_id = args.run_id or uuid.uuid4().hex[:12]
    dim = settings.vault.embedding_dim if args.embedding_dim is None else args.embedding_dim
    try:
        clients = ClientFactory.of(settings, args.api_key or None)
    except AuthConfigError as exc:
        return _fail(str(exc))
    targets = Targets(
        vault=args.vault or clients.address("episodic_vault"),
        scheduler=args.scheduler or clients.address("sleep_scheduler"),
        pruner=args.pruner or clients.address("sparse_pruner"),
        learner=args.learner or clients.address("koopman_learner"),
    )
    cfg = LoadConfig(
        rate=args.rate,
        duration_s=SOAK_S if args.soak else args.duration,
        mix=mix,
        workload=Workload(seed=seed, run_id=run_id, embedding_dim=dim),
        sleep_every_s=args.sleep_every,
        prune_every_s=args.prune_every,
        learn_every_s=args.learn_every,
        max_in_flight=args.max_in_flight,
        timeout_s=args.timeout,
        trigger_timeout_s=args.trigger_timeout,
        progress_every_s=args.progress_every,
        verify=not args.no_verify,
        api_key=clients.key or "",
        stop_file=stop_file,
        retention=(
            retention_of(settings.vault.tiers) if args.retention == "auto" else args.retention
        ),
        vault_metrics=args.vault_metrics or metrics_address(settings, "episodic_vault"),
    )
    try:
        _check_supported(cfg)
    except UnsupportedOperation as exc:
        return _fail(str(exc))
    if (other := _running_pid(pid_file)) is not None:
        return _fail(f"a loadgen (pid {other}) is already running; `tori-loadgen --stop` first")
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    stop_file.unlink(missing_ok=True)
    pid_file.write_text(f"{os.getpid()} {proc_start_time(os.getpid())}\n")
    print(
        f"loadgen {run_id}: {cfg.rate:g} ops/s for {cfg.duration_s:g} s, mix {args.mix}, "
        f"vault {targets.vault}; stop with `tori-loadgen --stop` or Ctrl-C",
        file=sys.stderr,
    )
    try:
        summary = asyncio.run(_run(cfg, targets, clients))
    finally:
        pid_file.unlink(missing_ok=True)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.summary_file:
        args.summary_file.parent.mkdir(parents=True, exist_ok=True)
        args.summary_file.write_text(text + "\n")
    return 0 if summary["ok"] else 1


async def _run(cfg: LoadConfig, targets: Targets, clients: ClientFactory) -> dict[str, object]:
    stop, interrupt = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        # The first signal ends the load (verification still runs); a second skips verification.
        (interrupt if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return await LoadRun(cfg, targets, clients=clients).run(stop, interrupt)


if __name__ == "__main__":
    sys.exit(main())
