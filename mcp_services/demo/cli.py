"""`make demo`: the memory at work on a running fleet, a line a step.

    python -m mcp_services.demo [--seed N] [--verbose] [--api-key KEY]

Stores a routine of named scenes (concepts that occur together) as noisy episodes, consolidates
them into the concept graph, prunes the graph, recalls with partial cues and shows what
completion added, and prints the learner's leading modes. Every step goes through a public CLI
(--verbose prints each command before its line). It talks to the fleet the configuration names
(config/, the port variables, TORI_VAR_DIR), as every CLI does.

Exit codes: 0 every step showed what it must; 1 a step did not (the message says which and why);
2 a configuration error.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence

import grpc

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import ConfigError, load_config, resolve_path
from mcp_services.demo import scenes
from mcp_services.demo.run import Demo, DemoFailed, Tools


def run_id() -> str:
    """Fresh for every run (UTC time and 4 random hex digits): ids and tags never collide."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def steps(demo: Demo) -> None:
    last_seq = demo.store()
    version = demo.consolidate()
    demo.automatic_prune(version)
    demo.prune()
    if not demo.committed:
        raise DemoFailed("no prune committed (the lines above say why each was not)")
    for scene, cue in scenes.CUES:
        demo.recall(scene, cue)
    demo.learner(last_seq)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mcp_services.demo", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--seed", type=int, help="the noise of the episodes (default: random)")
    parser.add_argument("--verbose", action="store_true", help="print each command it runs")
    parser.add_argument(
        "--api-key", help="the fleet's key (default: TORI_API_KEY, else the key file)"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_config()
        clients = ClientFactory.of(settings, args.api_key)
    except (ConfigError, AuthConfigError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rid = run_id()
    demo = Demo(
        tools=Tools(dict(os.environ), args.api_key, args.verbose),
        clients=clients,
        var_dir=resolve_path(settings.paths.var_dir),
        dt_s=settings.koopman_learner.dt_s,
        run_id=rid,
        seed=seed,
    )
    print(f"TORI Memory demo, run {rid} (--seed {seed} repeats its noise)")
    try:
        steps(demo)
    except DemoFailed as exc:
        return _failed(str(exc))
    except grpc.RpcError as exc:
        return _failed(f"{exc.code().name}: {exc.details()}")
    except subprocess.TimeoutExpired as exc:
        return _failed(f"`{' '.join(map(str, exc.cmd))}` did not finish within {exc.timeout:g} s")
    print(
        "done; the fleet keeps running. Try: .venv/bin/vault-cli recall --concepts "
        "concept:sand,concept:wave   (make status shows the fleet, make down stops it)"
    )
    return 0


def _failed(why: str) -> int:
    hint = ""
    if "UNAVAILABLE" in why:
        hint = " (is the fleet running? `make status` shows it, `make up` starts it)"
    print(f"demo failed: {why}{hint}", file=sys.stderr)
    return 1
