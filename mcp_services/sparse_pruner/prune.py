"""Run one pruning job from the command line, through the running SparsePruner.

    python -m mcp_services.sparse_pruner.prune --once [--dry-run] [--tau T] [--target HOST:PORT]

It calls TriggerPruning on the pruner (address from the config, as the fleet runs it, unless
``--target`` is given), waits for the job and prints it as JSON. Backups and the job record stay
with the service, exactly as for a run triggered any other way.

Exit codes: 0 the job succeeded (committed, or a dry run the guard accepted); 3 the guard refused;
1 the job failed or was cancelled; 2 bad arguments, bad config or the pruner is unreachable.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from google.protobuf.json_format import MessageToJson

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import ConfigError, load_config
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mcp_services.sparse_pruner.prune", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--once", action="store_true", required=True, help="run one job and exit")
    parser.add_argument("--dry-run", action="store_true", help="compute and report, commit nothing")
    parser.add_argument(
        "--tau", type=float, help="override tau for this run (units of lambda_max/100)"
    )
    parser.add_argument("--target", help="host:port of the pruner (default: from the config)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (3600)")
    parser.add_argument(
        "--api-key", help="the fleet's key (default: TORI_API_KEY, else the key file)"
    )
    args = parser.parse_args(argv)
    try:
        clients = ClientFactory.of(load_config(), args.api_key)
    except (ConfigError, AuthConfigError) as exc:
        print(f"prune: {exc}", file=sys.stderr)
        return EXIT_USAGE
    target = args.target or clients.address("sparse_pruner")
    request = pruner_pb2.TriggerPruningRequest(dry_run=args.dry_run, reason="prune --once")
    if args.tau is not None:
        request.options.tau = args.tau
    with clients.channel(target=target) as channel:
        stub = pruner_pb2_grpc.SparsePrunerStub(channel)
        try:
            job = stub.TriggerPruning(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            print(f"prune: {code.name}: {exc.details()}", file=sys.stderr)
            return EXIT_USAGE if code != grpc.StatusCode.RESOURCE_EXHAUSTED else EXIT_FAILED
    print(MessageToJson(job, preserving_proto_field_name=True))
    if job.state == pruner_pb2.JOB_STATE_SUCCEEDED:
        return EXIT_OK
    if job.state == pruner_pb2.JOB_STATE_REFUSED:
        return EXIT_REFUSED
    return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
