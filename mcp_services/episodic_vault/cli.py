"""vault-cli: talk to an EpisodicVault from the shell.

    vault-cli put --concepts concept:dog=0.9,concept:cat=0.4 --tags pets
    vault-cli get ID
    vault-cli list --limit 10 --tag pets
    vault-cli stats
    vault-cli put-get-loop 50        # write 50 episodes, read each back, compare, summarise
    vault-cli put-file episodes.jsonl   # one Episode (protobuf JSON) a line, one atomic batch
    vault-cli recall --concepts concept:kettle,concept:cup   # completed through the graph

The target defaults to the configured vault (its dial address, services.episodic_vault);
--target overrides it. Every call sends the fleet's key: --api-key, else TORI_API_KEY, else the
first key of the configured key file (auth.api_keys_file; /run/secrets/api_keys in compose).
Exit codes: 0 ok, 1 a failed check or call, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict, Parse, ParseError

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import ConfigError, load_config
from mcp_services.episodic_vault.rpc.codec import client_content
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc


def _parse_concepts(text: str) -> pb.ConceptActivation:
    act = pb.ConceptActivation()
    for item in filter(None, (s.strip() for s in text.split(","))):
        cid, _, strength = item.rpartition("=")
        if not cid:
            cid, strength = strength, "1.0"
        act.concept_ids.append(cid)
        act.strengths.append(float(strength))
    return act


def read_episodes(path: str) -> list[pb.Episode]:
    """Episodes of a JSON-lines file (``-``: stdin), one Episode in protobuf JSON a line.

    Raises ValueError naming the file, the line and the fix.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"put-file: cannot read {path}: {exc.strerror}") from exc
    episodes = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            episodes.append(Parse(line, pb.Episode()))
        except ParseError as exc:
            raise ValueError(
                f"put-file: {path} line {n} is not an episode: {exc}; give one JSON object a "
                'line, e.g. {"id": "e1", "activation": {"conceptIds": ["concept:dog"], '
                '"strengths": [0.9]}}'
            ) from exc
    if not episodes:
        raise ValueError(f"put-file: {path} holds no episode; give one JSON object a line")
    return episodes


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


@dataclass(frozen=True)
class LoopSummary:
    requested: int
    ok: int
    failed: int
    mismatched: int
    put_p50_ms: float
    put_p95_ms: float
    put_p99_ms: float
    get_p50_ms: float
    get_p95_ms: float
    get_p99_ms: float
    seconds: float
    ops_per_s: float
    errors: list[str]


def make_episode(run_id: str, i: int, dim: int, rng: random.Random) -> pb.Episode:
    """A loop episode: concepts with strengths and phases, tags, metadata, payload, embedding."""
    n = rng.randint(3, 12)
    concepts = rng.sample(range(500), n)
    ep = pb.Episode(
        id=f"loop-{run_id}-{i:06d}",
        tags=["put-get-loop", f"batch-{i // 10}"],
        source=pb.Source(type="vault-cli", id=run_id, user=os.environ.get("USER", "")),
        energy=rng.random(),
        activation=pb.ConceptActivation(
            concept_ids=[f"concept:{c}" for c in concepts],
            strengths=[rng.random() for _ in concepts],
            phases=[rng.uniform(-3.14, 3.14) for _ in concepts],
        ),
        payload=rng.randbytes(rng.randint(16, 256)),
        embedding=[rng.gauss(0, 1) for _ in range(dim)],
        metadata={"loop": run_id, "index": str(i)},
    )
    # The vault keeps timestamps to the millisecond.
    ep.timestamp.FromMilliseconds(time.time_ns() // 1_000_000)
    return ep


def put_get_loop(
    stub: episodic_pb2_grpc.EpisodicVaultStub,
    n: int,
    dim: int,
    metadata: Sequence[tuple[str, str]],
    timeout: float = 10.0,
) -> LoopSummary:
    """Write n episodes one by one, read each back, and compare it with what was sent."""
    run_id = uuid.uuid4().hex[:12]
    rng = random.Random(run_id)
    put_ms: list[float] = []
    get_ms: list[float] = []
    errors: list[str] = []
    ok = mismatched = 0
    start = time.perf_counter()
    for i in range(n):
        ep = make_episode(run_id, i, dim, rng)
        try:
            t0 = time.perf_counter()
            stub.PutEpisode(pb.PutEpisodeRequest(episode=ep), timeout=timeout, metadata=metadata)
            t1 = time.perf_counter()
            got = stub.GetEpisode(
                pb.GetEpisodeRequest(id=ep.id), timeout=timeout, metadata=metadata
            )
            t2 = time.perf_counter()
        except grpc.RpcError as exc:
            errors.append(f"{ep.id}: {exc.code().name}: {exc.details()}")
            continue
        put_ms.append((t1 - t0) * 1000)
        get_ms.append((t2 - t1) * 1000)
        if client_content(got.episode) == ep:
            ok += 1
        else:
            mismatched += 1
            errors.append(f"{ep.id}: read back differs from what was written")
    seconds = time.perf_counter() - start
    return LoopSummary(
        requested=n,
        ok=ok,
        failed=n - ok,
        mismatched=mismatched,
        put_p50_ms=percentile(put_ms, 50),
        put_p95_ms=percentile(put_ms, 95),
        put_p99_ms=percentile(put_ms, 99),
        get_p50_ms=percentile(get_ms, 50),
        get_p95_ms=percentile(get_ms, 95),
        get_p99_ms=percentile(get_ms, 99),
        seconds=seconds,
        ops_per_s=(2 * n / seconds) if seconds > 0 else 0.0,
        errors=errors[:20],
    )


def _print_summary(s: LoopSummary) -> None:
    print(f"put-get-loop: {s.ok}/{s.requested} ok, {s.failed} failed ({s.mismatched} mismatched)")
    print(f"  put  p50 {s.put_p50_ms:.2f} ms  p95 {s.put_p95_ms:.2f} ms  p99 {s.put_p99_ms:.2f} ms")
    print(f"  get  p50 {s.get_p50_ms:.2f} ms  p95 {s.get_p95_ms:.2f} ms  p99 {s.get_p99_ms:.2f} ms")
    print(f"  {s.seconds:.2f} s, {s.ops_per_s:.0f} ops/s (a put and a get per episode)")
    for err in s.errors:
        print(f"  error: {err}", file=sys.stderr)


def _dump(msg: object) -> None:
    print(json.dumps(MessageToDict(msg, preserving_proto_field_name=True), indent=2))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vault-cli", description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="host:port of the vault (default: from config)")
    parser.add_argument(
        "--api-key", help="the fleet's key (default: TORI_API_KEY, else the key file)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_put = sub.add_parser("put", help="store one episode")
    p_put.add_argument("--id", default="")
    p_put.add_argument("--concepts", required=True, help="id=strength,... (strength 0..1)")
    p_put.add_argument("--tags", default="")
    p_put.add_argument("--energy", type=float, default=0.0)
    p_put.add_argument("--payload", default="", help="text stored as the opaque payload")
    p_get = sub.add_parser("get", help="print one episode")
    p_get.add_argument("id")
    p_list = sub.add_parser("list", help="newest episodes first")
    p_list.add_argument("--limit", type=int, default=20)
    p_list.add_argument("--tag", action="append", default=[])
    sub.add_parser("stats", help="counts and sizes")
    p_loop = sub.add_parser("put-get-loop", help="write N episodes, read each back, compare")
    p_loop.add_argument("n", type=int)
    p_loop.add_argument("--json", action="store_true", help="print the summary as JSON")
    p_file = sub.add_parser(
        "put-file", help="store a JSON-lines file of episodes (- for stdin) as one atomic batch"
    )
    p_file.add_argument("path")
    p_recall = sub.add_parser(
        "recall", help="episodes for a concept cue, completed through the consolidated graph"
    )
    p_recall.add_argument(
        "--concepts", required=True, help="id[=strength],... (strength 0..1, 1 when omitted)"
    )
    p_recall.add_argument("--k", type=int, default=10, help="how many episodes, 1-1000")
    p_recall.add_argument("--tag", action="append", default=[], help="only episodes with it")
    p_recall.add_argument(
        "--no-complete", action="store_true", help="rank by the cue as given (no completion)"
    )
    p_recall.add_argument(
        "--bodies", action="store_true", help="include payloads and embeddings in the hits"
    )
    args = parser.parse_args(argv)

    try:
        settings = load_config()
    except ConfigError as exc:
        print(f"vault-cli: {exc}", file=sys.stderr)
        return 2
    try:
        clients = ClientFactory.of(settings, args.api_key or None)
    except AuthConfigError as exc:
        print(f"vault-cli: {exc}", file=sys.stderr)
        return 2
    target = args.target or clients.address("episodic_vault")
    channel = clients.channel(target=target)
    stub = episodic_pb2_grpc.EpisodicVaultStub(channel)
    try:
        if args.cmd == "put-get-loop":
            if args.n < 1:
                parser.error("put-get-loop: N must be at least 1")
            summary = put_get_loop(stub, args.n, settings.vault.embedding_dim, (), args.timeout)
            if args.json:
                print(json.dumps(asdict(summary)))
            else:
                _print_summary(summary)
            return 0 if summary.failed == 0 else 1
        if args.cmd == "put":
            ep = pb.Episode(
                id=args.id,
                tags=[t for t in args.tags.split(",") if t],
                energy=args.energy,
                activation=_parse_concepts(args.concepts),
                payload=args.payload.encode(),
                source=pb.Source(type="vault-cli"),
            )
            _dump(stub.PutEpisode(pb.PutEpisodeRequest(episode=ep), timeout=args.timeout))
        elif args.cmd == "get":
            _dump(stub.GetEpisode(pb.GetEpisodeRequest(id=args.id), timeout=args.timeout))
        elif args.cmd == "list":
            req = pb.ListRecentRequest(page_size=args.limit, filter=pb.EpisodeFilter(tags=args.tag))
            _dump(stub.ListRecent(req, timeout=args.timeout))
        elif args.cmd == "stats":
            _dump(stub.GetStats(pb.GetStatsRequest(), timeout=args.timeout))
        elif args.cmd == "put-file":
            batch = [pb.PutEpisodeRequest(episode=ep) for ep in read_episodes(args.path)]
            _dump(stub.PutEpisodes(iter(batch), timeout=args.timeout))
        elif args.cmd == "recall":
            if not 1 <= args.k <= 1000:
                parser.error(f"recall: --k {args.k} is out of range; give 1 to 1000")
            recall_req = pb.RecallRequest(
                cue=_parse_concepts(args.concepts),
                k=args.k,
                filter=pb.EpisodeFilter(tags=args.tag),
                no_completion=args.no_complete,
                omit_bodies=not args.bodies,
            )
            _dump(stub.Recall(recall_req, timeout=args.timeout))
    except grpc.RpcError as exc:
        print(f"vault-cli: {target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"vault-cli: {exc}", file=sys.stderr)
        return 2
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
