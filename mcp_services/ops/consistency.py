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

Every namespace is checked unless ``--namespace NS`` picks some: a check is asked "is my data
consistent", and a tenant left out would pass unseen. Each line of output starts with
``namespace <ns>:`` but the last, the verdict over all (``consistent`` or ``NOT consistent``). Two
backends' namespaces are those either store lists (a PostgreSQL store lists none: name them);
one held by one side only is a difference. With ``--services`` the namespaces are those the fleet
holds (ops.fleet_namespaces), and ``--json`` keeps the default's report at the top with the
others under ``namespaces``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

import grpc

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.config import ConfigError, load_config
from mcp_services.common.namespaces import DEFAULT, InvalidNamespace, check_namespace
from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.domain.backend import BackendError, VaultBackend
from mcp_services.episodic_vault.namespaces import namespace_config, postgres_schema
from mcp_services.episodic_vault.settings import VaultConfig
from mcp_services.ops.backend_spec import SpecError, describe, vault_config
from mcp_services.ops.fleet_namespaces import (
    UnknownNamespaces,
    fleet_namespaces,
    postgres_schemas,
    vault_namespaces,
)
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
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="check only this namespace (repeat for more); default: every namespace found",
    )
    p.add_argument("--json", action="store_true", help="with --services: the report as JSON")


def _named(names: list[str]) -> list[str]:
    for ns in names:
        check_namespace(ns, "--namespace")
    return sorted(set(names), key=lambda ns: (ns != DEFAULT, ns))


def run_services(args: argparse.Namespace) -> int:
    from mcp_services.ops.fleet_consistency import check_fleet

    try:
        settings = load_config()
        if args.backend:
            settings = settings.model_copy(update={"vault": vault_config(args.backend)})
        names = _named(args.namespace) or fleet_namespaces(settings)
        reports = {ns: check_fleet(settings, ns) for ns in names}
    except (
        ConfigError, SpecError, BackendError, AuthConfigError, InvalidNamespace, UnknownNamespaces
    ) as exc:  # fmt: skip
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:  # a service answers health but refuses the call
        print(
            f"error: a running service refused the check's call ({exc.code().name}: "
            f"{exc.details()}); check auth.api_keys / TORI_API_KEYS_FILE, or stop the fleet",
            file=sys.stderr,
        )
        return 2
    codes = [r.exit_code() for r in reports.values()]
    code = 1 if 1 in codes else max(codes)
    if args.json:
        # The first namespace's report at the top (the default's, as before namespaces), every
        # other one under "namespaces"; "consistent" is the verdict over all of them.
        first, *others = names
        out = reports[first].to_json() | {"namespace": first, "consistent": code == 0}
        out["namespaces"] = {ns: reports[ns].to_json() for ns in others}
        print(json.dumps(out, indent=2))
    else:
        for ns, report in reports.items():
            print("\n".join(f"namespace {ns}: {line}" for line in report.lines()))
        # The verdict over every namespace, last as before namespaces (scripts read that line).
        print("consistent" if code == 0 else f"NOT consistent (exit {code})")
    return code


def _present(cfg: VaultConfig, namespace: str) -> bool:
    """Whether the store holds ``namespace`` (checked without creating it)."""
    if namespace == DEFAULT:
        return True
    if cfg.backend == "postgres":
        return postgres_schema(cfg.postgres.schema_name, namespace) in postgres_schemas(cfg)
    return namespace in vault_namespaces(cfg)


def _check_namespace(cfg_a: VaultConfig, cfg_b: VaultConfig | None, ns: str) -> Report:
    """One namespace: A against B (or against its own counters)."""
    opened: list[VaultBackend] = []
    a, b = namespace_config(cfg_a, ns), namespace_config(cfg_b, ns) if cfg_b else None
    try:
        if cfg_b is None or b is None:
            opened.append(open_backend(a))
            return self_check(opened[0], describe(a))
        present = [_present(cfg_a, ns), _present(cfg_b, ns)]
        if not all(present):
            report = Report(describe(a), describe(b))
            if present[0]:
                opened.append(open_backend(a))
                report.count_a = opened[-1].stats().episode_count
            if present[1]:
                opened.append(open_backend(b))
                report.count_b = opened[-1].stats().episode_count
            lacking = "B" if present[0] else "A"
            report.problems.append(f"the namespace is not in {lacking} at all")
            return report
        opened += [open_backend(a), open_backend(b)]
        return compare(opened[0], opened[1], describe(a), describe(b))
    finally:
        for backend in opened:
            backend.close()


def run(args: argparse.Namespace) -> int:
    if args.services:
        if args.against:
            print("error: --services checks one fleet; drop --against", file=sys.stderr)
            return 2
        return run_services(args)
    if args.json:
        print("error: --json goes with --services", file=sys.stderr)
        return 2
    try:
        cfg_a = vault_config(args.backend)
        cfg_b = vault_config(args.against) if args.against else None
        names = _named(args.namespace) or [
            DEFAULT,
            *sorted(vault_namespaces(cfg_a) | (vault_namespaces(cfg_b) if cfg_b else set())),
        ]
        reports = {ns: _check_namespace(cfg_a, cfg_b, ns) for ns in names}
    except (SpecError, BackendError, InvalidNamespace) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for ns, report in reports.items():
        print("\n".join(f"namespace {ns}: {line}" for line in report.lines()))
    consistent = all(r.consistent for r in reports.values())
    print("consistent" if consistent else "NOT consistent")  # over every namespace, last
    return 0 if consistent else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tori-ops verify-consistency", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
