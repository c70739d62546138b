"""Start a consolidation cycle from the command line.

    python -m mcp_services.sleep_scheduler.trigger --once [--target HOST:PORT] [--tag T ...]
        [--max-episodes N] [--min-age-s S] [--min-energy E] [--no-wait] [--timeout S]

Prints the job as JSON and exits 0 when it succeeded, 1 when it failed or was cancelled, 2 on a
configuration or argument error, 3 when the scheduler is unreachable or another consolidation is
running (retry later).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import grpc
from google.protobuf.json_format import MessageToDict

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import ConfigError, load_config
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mcp_services.sleep_scheduler.trigger", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--once", action="store_true", required=True, help="run one cycle")
    parser.add_argument("--target", help="scheduler host:port (default: from config)")
    parser.add_argument(
        "--api-key", help="the fleet's key (default: TORI_API_KEY, else the key file)"
    )
    parser.add_argument("--tag", action="append", default=[], help="only episodes with this tag")
    parser.add_argument("--max-episodes", type=int, default=0)
    parser.add_argument("--min-age-s", type=float, default=0.0)
    parser.add_argument("--max-age-s", type=float, default=0.0)
    parser.add_argument("--min-energy", type=float, default=0.0)
    parser.add_argument("--no-wait", action="store_true", help="return once the job started")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    args = parser.parse_args(argv)

    try:
        clients = ClientFactory.of(load_config(), args.api_key or None)
    except (ConfigError, AuthConfigError) as exc:
        print(f"trigger: {exc}", file=sys.stderr)
        return 2
    target = args.target or clients.address("sleep_scheduler")
    request = sleep_pb2.StartConsolidationRequest(
        wait=not args.no_wait,
        trigger="trigger",
        selection=sleep_pb2.EpisodeSelection(
            tags=args.tag,
            max_episodes=args.max_episodes,
            min_age_s=args.min_age_s,
            max_age_s=args.max_age_s,
            min_energy=args.min_energy,
        ),
    )
    with clients.channel(target=target) as channel:
        stub = sleep_pb2_grpc.SleepSchedulerStub(channel)
        try:
            job = stub.StartConsolidation(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            print(f"trigger: {code.name}: {exc.details()} (scheduler {target})", file=sys.stderr)
            return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 3
    print(json.dumps(MessageToDict(job, preserving_proto_field_name=True), indent=2))
    ok = job.state in (sleep_pb2.JOB_STATE_SUCCEEDED, sleep_pb2.JOB_STATE_RUNNING)
    ok = ok or (args.no_wait and job.state == sleep_pb2.JOB_STATE_PENDING)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
