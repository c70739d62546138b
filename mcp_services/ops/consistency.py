"""`tori-ops verify-consistency`: say exactly where two stores (or a store and its own counters)
disagree, and exit non-zero when they do.

``--backend A --against B`` compares two vault backends episode by episode: the ids each holds,
each episode's content hash, its consolidation state and graph version, and the totals. Without
``--against`` it checks one backend against itself: the counters it keeps (episode count,
consolidated count) against a full scan.

``--services`` checks the services' own data against each other instead: the vault's vector
index and tier counts against its backend, the scheduler's graph versions and concept index, the
learner's state against the graph's concepts (mcp_services/ops/fleet_consistency.py lists every
rule); ``--json`` prints the report with a fingerprint (counts and content digests) to compare
two fleets, e.g. an original and its restored backup. Exit codes: 0 consistent, 1 differences,
2 bad arguments or config, 3 the data changed while it was checked (run it again).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

import grpc

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.config import ConfigError, load_config
from mcp_services.episodic_vault.backends import BackendError, VaultBackend, open_backend
from mcp_services.ops.backend_spec import SpecError, describe, vault_config
from mcp_services.ops.transfer import iter_backend

SHOWN = 10  # differences listed per kind; the counts are always complete


@dataclass
class Report:
    a: str
    b: str
    count_a: int = 0
    count_b: int = 0
    consolidated_a: int = 0
    consolidated_b: int = 0
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    hash_differs: list[str] = field(default_factory=list)
    state_differs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not (
            self.only_a or self.only_b or self.hash_differs or self.state_differs or self.problems
        )

    def lines(self) -> list[str]:
        out = [
            f"A: {self.a}: {self.count_a} episodes, {self.consolidated_a} consolidated",
            f"B: {self.b}: {self.count_b} episodes, {self.consolidated_b} consolidated",
        ]
        for label, ids in (
            ("only in A", self.only_a),
            ("only in B", self.only_b),
            ("content hash differs", self.hash_differs),
            ("consolidation state differs", self.state_differs),
        ):
            if ids:
                shown = ", ".join(ids[:SHOWN]) + (" ..." if len(ids) > SHOWN else "")
                out.append(f"DIFF {label}: {len(ids)} ({shown})")
        out.extend(f"DIFF {p}" for p in self.problems)
        out.append("consistent" if self.consistent else "NOT consistent")
        return out


def compare(a: VaultBackend, b: VaultBackend, name_a: str, name_b: str) -> Report:
    report = Report(name_a, name_b)
    seen: dict[str, tuple[str, bool, int]] = {}
    for ep in iter_backend(a):
        seen[ep.id] = (ep.content_hash, ep.consolidated, ep.graph_version)
        report.count_a += 1
        report.consolidated_a += ep.consolidated
    for ep in iter_backend(b):
        report.count_b += 1
        report.consolidated_b += ep.consolidated
        mine = seen.pop(ep.id, None)
        if mine is None:
            report.only_b.append(ep.id)
            continue
        if mine[0] != ep.content_hash:
            report.hash_differs.append(ep.id)
        if mine[1:] != (ep.consolidated, ep.graph_version):
            report.state_differs.append(ep.id)
    report.only_a = sorted(seen)
    report.problems.extend(_counters(a, "A", report.count_a, report.consolidated_a))
    report.problems.extend(_counters(b, "B", report.count_b, report.consolidated_b))
    return report


def _counters(backend: VaultBackend, label: str, scanned: int, consolidated: int) -> list[str]:
    stats = backend.stats()
    problems = []
    if stats.episode_count != scanned:
        problems.append(
            f"{label}'s episode counter says {stats.episode_count} but a scan finds {scanned}"
        )
    if stats.consolidated_count != consolidated:
        problems.append(
            f"{label}'s consolidated counter says {stats.consolidated_count} but a scan finds "
            f"{consolidated}"
        )
    return problems


def self_check(backend: VaultBackend, name: str) -> Report:
    report = Report(name, "(its own counters)")
    for ep in iter_backend(backend):
        report.count_a += 1
        report.consolidated_a += ep.consolidated
    stats = backend.stats()
    report.count_b, report.consolidated_b = stats.episode_count, stats.consolidated_count
    report.problems.extend(_counters(backend, "A", report.count_a, report.consolidated_a))
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="KIND[:key=value,...]; default: the configured backend")
    p.add_argument("--against", help="a second backend to compare with, KIND[:key=value,...]")
    p.add_argument(
        "--services",
        action="store_true",
        help="check the services' data against each other: vault index and tiers, graph "
        "versions, learner concepts (--backend picks the vault's backend)",
    )
    p.add_argument("--json", action="store_true", help="with --services: the report as JSON")


def run_services(args: argparse.Namespace) -> int:
    from mcp_services.ops.fleet_consistency import check_fleet

    try:
        settings = load_config()
        if args.backend:
            settings = settings.model_copy(update={"vault": vault_config(args.backend)})
        report = check_fleet(settings)
    except (ConfigError, SpecError, BackendError, AuthConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:  # a service answers health but refuses the call
        print(
            f"error: a running service refused the check's call ({exc.code().name}: "
            f"{exc.details()}); check auth.api_keys / TORI_API_KEYS_FILE, or stop the fleet",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return report.exit_code()


def run(args: argparse.Namespace) -> int:
    if args.services:
        if args.against:
            print("error: --services checks one fleet; drop --against", file=sys.stderr)
            return 2
        return run_services(args)
    if args.json:
        print("error: --json goes with --services", file=sys.stderr)
        return 2
    opened: list[VaultBackend] = []
    try:
        cfg_a = vault_config(args.backend)
        opened.append(open_backend(cfg_a))
        if args.against:
            cfg_b = vault_config(args.against)
            opened.append(open_backend(cfg_b))
            report = compare(opened[0], opened[1], describe(cfg_a), describe(cfg_b))
        else:
            report = self_check(opened[0], describe(cfg_a))
    except (SpecError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for backend in opened:
            backend.close()
    print("\n".join(report.lines()))
    return 0 if report.consistent else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tori-ops verify-consistency", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
