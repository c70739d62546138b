"""What the KoopmanLearner has learnt, from the command line.

    python -m mcp_services.koopman_learner.status [--stream NAME] [--modes N] [--all] [--json]
        [--target HOST:PORT] [--wait-seq SEQ [--wait-s S]]

Prints the learner's model (version, modes, concepts, snapshots learnt, vault cursor), its named
streams with their leading periods, and the leading spectral modes of one stream (the default
stream unless --stream), most significant first, one conjugate pair as one mode: frequency (Hz),
period (in the stream's time unit), |lambda|, persistence, significance and the concepts that
dominate it. Modes that are not significant are left out unless --all. `--wait-seq SEQ` first
waits (up to `--wait-s`, 60 s) until the learner has read the vault up to seq SEQ, e.g. the seq
`vault-cli put-file` reported for the last episode it stored.

Exit codes: 0 a model is served; 1 no model yet, or the wait ran out; 2 bad arguments or
configuration; 3 the learner is unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import grpc
from google.protobuf.json_format import MessageToDict

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import ConfigError, load_config
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.gen.tori.koopman.v1 import koopman_pb2_grpc

EXIT_OK, EXIT_NOT_READY, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
# How often --wait-seq asks; the learner follows the vault within moments of a put.
_POLL_S = 0.25


def wait_for_seq(
    stub: koopman_pb2_grpc.KoopmanLearnerStub, seq: int, within_s: float, timeout: float
) -> pb.KclStats:
    """The learner's stats once its vault cursor reaches `seq`, or the last ones at the deadline."""
    deadline = time.monotonic() + within_s
    while True:
        stats: pb.KclStats = stub.GetKclStats(pb.GetKclStatsRequest(), timeout=timeout)
        if stats.vault_cursor >= seq or time.monotonic() >= deadline:
            return stats
        time.sleep(_POLL_S)


def why_behind(stub: koopman_pb2_grpc.KoopmanLearnerStub, seq: int, timeout: float) -> str:
    """What the learner says about its vault follower, for a wait that ran out."""
    st: pb.ProcessingStatus = stub.GetProcessingStatus(
        pb.GetProcessingStatusRequest(), timeout=timeout
    )
    if not st.following_vault:
        return "it does not follow the vault (koopman_learner.follow_vault is off)"
    if st.last_error:
        return st.last_error
    if st.vault_last_seq < seq:
        return f"the vault it follows holds nothing after seq {st.vault_last_seq}"
    return f"it is still reading ({st.episodes_behind} episodes behind); wait longer (--wait-s)"


def describe(
    stats: pb.KclStats,
    modes: pb.GetSpectralModesResponse | None,
    target: str,
    stream: str = "",
) -> str:
    """The report a person reads: headline, named streams, then a table of the leading modes."""
    head = (
        f"learner {target}: model v{stats.model_version}, {stats.mode_count} modes over "
        f"{stats.concept_count} concepts (rank {stats.rank}), {stats.snapshots_processed} "
        f"snapshots learnt, vault cursor {stats.vault_cursor}"
    )
    lines = [head]
    for d in stats.streams:
        if not d.name:
            continue
        periods = ", ".join(f"{p.period:.5g}" for p in d.periods) or "none significant"
        lines.append(
            f"  stream {d.name!r}: dt {d.dt:g} {d.time_unit}, delays {d.delays}, "
            f"{d.mode_count} modes, periods ({d.time_unit}) {periods}"
        )
    if modes is None:
        return "\n".join([*lines, f"  no model yet{f' for stream {stream!r}' if stream else ''}"])
    unit = modes.time_unit or "s"
    title = f"stream {stream!r}" if stream else "the default stream"
    lines.append(f"  modes of {title} by significance (period in {unit})")
    lines.append(
        "  mode    freq Hz      period  |lambda|  persist  signif.  amplitude  dominant concepts"
    )
    for i, m in enumerate(modes.modes, start=1):
        concepts = ", ".join(d.concept_id for d in m.dominant_concepts)
        shown = f"{m.period:>10.5g}" if m.period else f"{'steady':>10}"
        flag = "" if m.significant else " (not significant)"
        lines.append(
            f"  {i:>4}  {m.frequency_hz:>9.3g}  {shown}  {m.magnitude:>8.3f}  "
            f"{m.persistence:>7.3f}  {m.significance:>7.3f}  {m.amplitude:>9.3f}  {concepts}{flag}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mcp_services.koopman_learner.status",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--target", help="host:port of the learner (default: from the config)")
    parser.add_argument(
        "--api-key", help="the fleet's key (default: TORI_API_KEY, else the key file)"
    )
    parser.add_argument("--modes", type=int, default=5, help="leading modes to show, 0-1000 (5)")
    parser.add_argument("--concepts", type=int, default=3, help="dominant concepts a mode, 1-100")
    parser.add_argument("--stream", default="", help="the named stream to show (default stream)")
    parser.add_argument("--all", action="store_true", help="also list modes not significant")
    parser.add_argument("--json", action="store_true", help="print stats and modes as JSON")
    parser.add_argument("--wait-seq", type=int, default=0, help="first wait for this vault seq")
    parser.add_argument("--wait-s", type=float, default=60.0, help="longest wait (60 s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (10)")
    args = parser.parse_args(argv)
    if not 0 <= args.modes <= 1000:
        parser.error(f"--modes {args.modes} is out of range; give 0 to 1000")
    if not 1 <= args.concepts <= 100:
        parser.error(f"--concepts {args.concepts} is out of range; give 1 to 100")
    try:
        clients = ClientFactory.of(load_config(), args.api_key)
    except (ConfigError, AuthConfigError) as exc:
        print(f"status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    target = args.target or clients.address("koopman_learner")
    with clients.channel(target=target) as channel:
        stub = koopman_pb2_grpc.KoopmanLearnerStub(channel)
        try:
            stats = wait_for_seq(stub, args.wait_seq, args.wait_s, args.timeout)
            behind = ""
            if stats.vault_cursor < args.wait_seq:
                behind = why_behind(stub, args.wait_seq, args.timeout)
            modes = None
            if stats.model_ready or args.stream:
                modes = stub.GetSpectralModes(
                    pb.GetSpectralModesRequest(
                        limit=args.modes,
                        top_concepts=args.concepts,
                        collapse_conjugates=True,
                        stream=args.stream,
                        include_insignificant=args.all,
                    ),
                    timeout=args.timeout,
                )
        except grpc.RpcError as exc:
            if args.stream and exc.code() == grpc.StatusCode.NOT_FOUND:
                print(f"status: {exc.details()}", file=sys.stderr)
                return EXIT_USAGE
            if args.stream and exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                modes = None
            else:
                print(f"status: {target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return EXIT_UNREACHABLE
    if args.json:
        out = {
            "target": target,
            "stats": MessageToDict(stats, preserving_proto_field_name=True),
            "modes": MessageToDict(modes, preserving_proto_field_name=True) if modes else None,
        }
        print(json.dumps(out, indent=2))
    else:
        print(describe(stats, modes, target, args.stream))
    if stats.vault_cursor < args.wait_seq:
        print(
            f"status: within {args.wait_s:g} s the learner read the vault up to seq "
            f"{stats.vault_cursor}, not {args.wait_seq}: {behind}",
            file=sys.stderr,
        )
        return EXIT_NOT_READY
    return EXIT_OK if modes is not None else EXIT_NOT_READY


if __name__ == "__main__":
    sys.exit(main())
