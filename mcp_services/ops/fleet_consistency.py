"""`tori-ops verify-consistency --services`: the services' own data, checked against each other.

What is compared (each difference is one ``DIFF`` line naming what differs and what to do):

- **vault index vs backend**: the persisted vector index (read-only: manifest, labels, faiss
  file) must be intact and belong to this store; every live label must be an episode the backend
  holds with the same content; every episode with a searchable embedding must be indexed. While
  the vault runs, its index is saved only every ``vault.index.save_interval_s``, so the saved copy
  is then checked for damage and wrong content only, and membership is checked by count through
  the running vault (``Search`` reports its index size).
- **tier counts**: every episode's tier agrees with its consolidation state (consolidated: LTM);
  the backend's per-tier counters and, while the vault runs, what ``GetStats`` reports per tier
  (STM + MTM = unconsolidated, LTM = consolidated) agree with a full scan.
- **graph versions**: every retained version loads and keeps the store's rules (header counts =
  concept index and edges stored; edges in range, upper triangle, finite, once; prototypes
  within the index); versions are consecutive, each committed against the one before, each
  concept index extending the previous; a running scheduler reports the same latest version; no
  episode is consolidated into a version newer than the latest.
- **learner vs graph**: the learner's state loads, its modes and couplings cover the concepts
  they name, and every concept it names is known to the graph's latest concept index or, at
  least, to a stored episode (the graph only holds concepts active in consolidated episodes, so
  concepts the vault holds but the graph does not yet are counted, not failed); its vault cursor
  is not beyond the vault's last seq.

The report ends with a fingerprint (counts and content digests per service), so two fleets (an
original and its restored backup) can be compared exactly. A check that saw the vault or the
graph change while it ran says so and exits 3: run it again while writes are paused.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcp_services.common.clients import ClientFactory, dial_address
from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import Settings
from mcp_services.common.health import check
from mcp_services.common.namespaces import DEFAULT, namespace_dir, namespace_metadata
from mcp_services.episodic_vault.adapters.storage import index_dir, open_backend, store_identity
from mcp_services.episodic_vault.domain.backend import VaultBackend
from mcp_services.episodic_vault.domain.model import Tier
from mcp_services.episodic_vault.domain.vector_index import content_key, normalised
from mcp_services.episodic_vault.namespaces import namespace_config
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.ops.fleet_namespaces import service_dirs
from mcp_services.ops.service_data import GraphFile, read_graphs, read_index, read_learner
from mcp_services.ops.transfer import iter_backend

SHOWN = 10  # items listed per difference; the counts are always complete
RPC_TIMEOUT_S = 30.0


def _some(items: list[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:SHOWN])
    return shown + (" ..." if len(items) > SHOWN else "")


@dataclass
class FleetReport:
    checked: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unsettled: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        return not self.diffs

    def exit_code(self) -> int:
        return 1 if self.diffs else 3 if self.unsettled else 0

    def lines(self) -> list[str]:
        out = [f"ok   {c}" for c in self.checked]
        out += [f"note {n}" for n in self.notes]
        out += [f"CHANGED {u}" for u in self.unsettled]
        out += [f"DIFF {d}" for d in self.diffs]
        if self.diffs:
            out.append(f"NOT consistent ({len(self.diffs)} differences)")
        elif self.unsettled:
            out.append("inconclusive: the data changed during the check; run it with writes paused")
        else:
            out.append("consistent")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "consistent": self.consistent and not self.unsettled,
            "checked": self.checked,
            "notes": self.notes,
            "changed_during_check": self.unsettled,
            "diffs": self.diffs,
            "fingerprint": self.fingerprint,
        }


# -- the vault's episodes, scanned once ----------------------------------------------------------


@dataclass
class VaultScan:
    count: int = 0
    consolidated: int = 0
    last_seq: int = 0
    by_tier: Counter[Tier] = field(default_factory=Counter)
    tier_wrong: list[str] = field(default_factory=list)
    vectors: dict[int, int] = field(default_factory=dict)  # seq -> content key
    concepts: set[str] = field(default_factory=set)
    newest_graph: tuple[int, str] = (0, "")  # (graph version, an episode consolidated into it)
    digest: str = ""


def scan_vault(backend: VaultBackend, dim: int, indexed: bool) -> VaultScan:
    s = VaultScan()
    rows = []
    for ep in iter_backend(backend):
        s.count += 1
        s.consolidated += ep.consolidated
        s.by_tier[ep.tier] += 1
        if ep.tier != (Tier.LTM if ep.consolidated else Tier.MTM):
            s.tier_wrong.append(ep.id)
        if indexed and len(ep.embedding) == dim and normalised(ep.embedding) is not None:
            s.vectors[ep.seq] = content_key(ep.content_hash)
        for act in (ep.activation, *(f.activation for f in ep.trace)):
            s.concepts.update(act.concept_ids)
        if ep.graph_version > s.newest_graph[0]:
            s.newest_graph = (ep.graph_version, ep.id)
        rows.append(f"{ep.id}\0{ep.content_hash}\0{int(ep.consolidated)}\0{ep.graph_version}\n")
    rows.sort()  # by id: the digest does not depend on a backend's seqs
    h = hashlib.sha256()
    for row in rows:
        h.update(row.encode())
    s.digest = h.hexdigest()
    s.last_seq = backend.stats().last_seq
    return s


# -- the running services ------------------------------------------------------------------------


class Rpc:
    """Calls to the running services, with the configured API key (if any)."""

    def __init__(self, settings: Settings, namespace: str = DEFAULT) -> None:
        self._clients = ClientFactory.of(settings)
        self._settings = settings
        self._md = namespace_metadata(namespace)

    def running(self, name: str) -> str | None:
        """The service's address when it answers health as SERVING, else None."""
        address = dial_address(self._settings, name)
        return address if check(address, timeout=1.0) == "SERVING" else None

    def vault(self, address: str) -> tuple[episodic_pb2.GetStatsResponse, int | None]:
        """The vault's stats and its index size (None when search is off)."""
        with self._clients.channel(target=address) as ch:
            stub = episodic_pb2_grpc.EpisodicVaultStub(ch)
            stats = stub.GetStats(
                episodic_pb2.GetStatsRequest(), timeout=RPC_TIMEOUT_S, metadata=self._md
            )
            dim = self._settings.vault.embedding_dim
            if not self._settings.vault.index.enabled or dim == 0:
                return stats, None
            query = np.random.default_rng().standard_normal(dim).astype(np.float32)
            found = stub.Search(
                episodic_pb2.SearchRequest(embedding=query.tolist(), k=1, omit_bodies=True),
                timeout=RPC_TIMEOUT_S,
                metadata=self._md,
            )
            return stats, int(found.index_size)

    def latest_graph(self, address: str) -> int:
        with self._clients.channel(target=address) as ch:
            stub = sleep_pb2_grpc.SleepSchedulerStub(ch)
            listed = stub.ListGraphVersions(
                sleep_pb2.ListGraphVersionsRequest(), timeout=RPC_TIMEOUT_S, metadata=self._md
            )
            return int(listed.versions[0].header.version) if listed.versions else 0


# -- the checks ----------------------------------------------------------------------------------


def _check_tiers(r: FleetReport, backend: VaultBackend, scan: VaultScan, live: Any | None) -> None:
    if scan.tier_wrong:
        r.diffs.append(
            f"vault tiers: {len(scan.tier_wrong)} episodes whose tier disagrees with their "
            f"consolidation state (consolidated must be LTM, unconsolidated MTM): "
            f"{_some(scan.tier_wrong)}; re-mark them with MarkConsolidated or restore the vault"
        )
    counted = {t.tier: t.episode_count for t in backend.stats().tiers}
    for tier in sorted(set(counted) | set(scan.by_tier)):
        if counted.get(tier, 0) != scan.by_tier.get(tier, 0):
            r.diffs.append(
                f"vault tiers: the backend counts {counted.get(tier, 0)} episodes in "
                f"{tier.name} but a scan finds {scan.by_tier.get(tier, 0)}"
            )
    if live is not None:
        reported = {Tier(t.tier): t.episode_count for t in live.tiers}
        hot = reported.get(Tier.STM, 0) + reported.get(Tier.MTM, 0)
        for what, says, finds in (
            ("episodes", live.episode_count, scan.count),
            ("STM + MTM episodes", hot, scan.count - scan.consolidated),
            ("LTM episodes", reported.get(Tier.LTM, 0), scan.consolidated),
        ):
            if says != finds:
                r.diffs.append(
                    f"vault tiers: the running vault reports {says} {what} but the backend "
                    f"holds {finds}"
                )
    r.checked.append(
        "vault tiers: "
        + ", ".join(f"{t.name} {n}" for t, n in sorted(scan.by_tier.items()))
        + (" (and the running vault's GetStats)" if live is not None else "")
    )


def _check_index(
    r: FleetReport, settings: Settings, scan: VaultScan, index_size: int | None, running: bool
) -> None:
    cfg = settings.vault
    if not cfg.index.enabled or cfg.embedding_dim == 0:
        r.notes.append("vault index: search is off in this deployment; nothing to check")
        return
    path = index_dir(cfg, settings.paths.var_dir)
    if path is None:
        r.notes.append("vault index: not persisted (memory vault without a snapshot file)")
    else:
        files = read_index(path, cfg.embedding_dim, cfg.index.hnsw_m, store_identity(cfg))
        r.diffs.extend(files.problems)
        if not files.present:
            r.notes.append(
                f"vault index: none saved at {path}; the vault builds it from the backend at "
                f"start ({len(scan.vectors)} vectors)"
            )
        elif not files.problems:
            held = files.labels
            wrong = sorted(s for s, k in held.items() if s in scan.vectors and scan.vectors[s] != k)
            ghosts = sorted(s for s in held if s not in scan.vectors)
            missing = sorted(s for s in scan.vectors if s not in held)
            if wrong:
                r.diffs.append(
                    f"vault index {path}: {len(wrong)} entries carry another content than the "
                    f"backend's episode at that seq: seqs {_some(wrong)}; delete {path} and "
                    "restart the vault to rebuild it"
                )
            if running and (ghosts or missing):
                r.notes.append(
                    f"vault index {path}: the saved copy lags the running vault by "
                    f"{len(missing)} new and {len(ghosts)} removed episodes (saved every "
                    f"{cfg.index.save_interval_s:g} s and at shutdown)"
                )
            elif ghosts or missing:
                if ghosts:
                    r.diffs.append(
                        f"vault index {path}: {len(ghosts)} entries for episodes the backend "
                        f"does not hold (or holds without a searchable embedding): seqs "
                        f"{_some(ghosts)}"
                    )
                if missing:
                    r.diffs.append(
                        f"vault index {path}: {len(missing)} episodes with an embedding are not "
                        f"indexed: seqs {_some(missing)}"
                    )
                r.diffs[-1] += "; delete the index directory and start the vault to rebuild it"
            if not running:
                r.checked.append(
                    f"vault index {path}: {len(held)} entries, {files.tombstones} tombstones, "
                    f"{len(scan.vectors)} episodes with an embedding"
                )
    if index_size is not None:
        if index_size != len(scan.vectors):
            r.diffs.append(
                f"vault index: the running vault indexes {index_size} vectors but the backend "
                f"holds {len(scan.vectors)} episodes with a searchable embedding; restart the "
                "vault to rebuild its index"
            )
        else:
            r.checked.append(f"vault index (running vault): {index_size} vectors, one per episode")


def _check_graphs(
    r: FleetReport, graphs: list[GraphFile], leftovers: list[str], root: Path, scan: VaultScan
) -> GraphFile | None:
    for g in graphs:
        if g.problems:
            r.diffs.append(f"graph version {g.version} ({g.path}): {'; '.join(g.problems)}")
    for prev, cur in itertools.pairwise(graphs):
        if cur.version != prev.version + 1:
            r.diffs.append(
                f"graph versions {prev.version} and {cur.version} are both kept but the "
                "versions between them are missing (retention only drops the oldest)"
            )
        if prev.ok and cur.ok and cur.concept_ids[: len(prev.concept_ids)] != prev.concept_ids:
            r.diffs.append(
                f"graph version {cur.version}'s concept index does not extend version "
                f"{prev.version}'s (a concept must keep its position)"
            )
    for g in graphs:
        if g.ok and g.base_version != g.version - 1:
            r.diffs.append(
                f"graph version {g.version} says it was committed against version "
                f"{g.base_version}, not {g.version - 1} (commits go against the latest only)"
            )
    if leftovers:
        r.notes.append(
            f"graphs {root}: {len(leftovers)} temporary files of an interrupted commit "
            f"({_some(leftovers)}); the scheduler deletes them when it starts"
        )
    latest = graphs[-1] if graphs else None
    newest_used, by = scan.newest_graph
    if newest_used > (latest.version if latest else 0):
        r.diffs.append(
            f"episode {by} was consolidated into graph version {newest_used} but the newest "
            f"graph version is {latest.version if latest else 'none'} (the graphs are older "
            "than the vault: restore both from the same backup)"
        )
    if graphs:
        r.checked.append(
            f"graphs {root}: versions {graphs[0].version}..{graphs[-1].version}, "
            f"{len(latest.concept_ids) if latest else 0} concepts in the latest"
        )
    else:
        r.checked.append(f"graphs {root}: no version committed yet")
    return latest


def _check_learner(
    r: FleetReport, settings: Settings, scan: VaultScan, graph: GraphFile | None
) -> str:
    from mcp_services.koopman_learner.server import data_dir

    lf = read_learner(resolve_path(str(data_dir(settings))))
    r.diffs.extend(lf.problems)
    if not lf.present:
        r.checked.append(f"learner {lf.path}: no state yet")
        return ""
    in_graph = set(graph.concept_ids) if graph is not None and graph.ok else set()
    parts: dict[str, list[str]] = {}  # concept -> the parts of the state that name it
    for part, ids in lf.concepts.items():
        for c in ids:
            parts.setdefault(c, []).append(part)
    named = set(parts)
    unknown = sorted(c for c in named if c not in in_graph and c not in scan.concepts)
    if unknown:
        labelled = [f"{c} ({'/'.join(parts[c])})" for c in unknown]
        r.diffs.append(
            f"learner: {len(unknown)} concepts known to neither the graph nor any stored "
            f"episode: {_some(labelled)} (the learner "
            "is newer than the graph and vault, or its state was damaged; reset it with "
            "ResetModel to relearn)"
        )
    pending = sorted(c for c in named if c not in in_graph and c in scan.concepts)
    if pending:
        r.notes.append(
            f"learner: {len(pending)} of its {len(named)} concepts are in stored episodes but "
            f"not (yet) in the graph's concept index, which holds only concepts active in "
            f"consolidated episodes: {_some(pending)}"
        )
    if lf.cursor > scan.last_seq:
        r.diffs.append(
            f"learner: it has read the vault up to seq {lf.cursor} but the vault's last seq "
            f"is {scan.last_seq}, so episodes stored at the next seqs would never be learnt "
            "(the vault is older than the learner's state); reset it with ResetModel "
            "rescan_vault"
        )
    r.checked.append(
        f"learner {lf.path}: {len(named)} concepts named, cursor {lf.cursor} "
        f"(vault last seq {scan.last_seq})"
    )
    return lf.digest


def namespace_settings(settings: Settings, namespace: str) -> Settings:
    """``settings`` with every service's data where it keeps ``namespace``'s: the vault's store
    (episodic_vault.namespaces), the graph, pruner and learner directories under namespaces/."""
    if namespace == DEFAULT:
        return settings
    dirs = service_dirs(settings)
    sections = {
        "sleep_scheduler": ("graph_dir", dirs["graphs"]),
        "sparse_pruner": ("backup_dir", dirs["pruner"]),
        "koopman_learner": ("data_dir", dirs["koopman"]),
    }
    update: dict[str, Any] = {"vault": namespace_config(settings.vault, namespace)}
    for section, (key, root) in sections.items():
        cfg = getattr(settings, section)
        update[section] = cfg.model_copy(update={key: str(namespace_dir(root, namespace))})
    return settings.model_copy(update=update)


def check_fleet(settings: Settings, namespace: str = DEFAULT) -> FleetReport:
    """Every check of the module docstring against ``namespace``'s data in the fleet configured
    by ``settings``."""
    from mcp_services.sleep_scheduler.server import graph_dir

    settings = namespace_settings(settings, namespace)
    r = FleetReport()
    rpc = Rpc(settings, namespace)
    vault_at = rpc.running("episodic_vault")
    sched_at = rpc.running("sleep_scheduler")
    cfg = settings.vault
    before = rpc.vault(vault_at) if vault_at else None
    backend = open_backend(cfg)
    try:
        indexed = cfg.index.enabled and cfg.embedding_dim > 0
        scan = scan_vault(backend, cfg.embedding_dim, indexed)
        after = rpc.vault(vault_at) if vault_at else None
        if (
            before is not None
            and after is not None
            and (
                before[0].last_seq != after[0].last_seq
                or before[0].consolidated_count != after[0].consolidated_count
                or before[0].episode_count != after[0].episode_count
            )
        ):
            r.unsettled.append(
                f"the vault was written during the check (last seq {before[0].last_seq} -> "
                f"{after[0].last_seq}); its live counts were not compared"
            )
            after = None
        settled = vault_at is None or after is not None
        stored = backend.stats()
        for what, says, finds in (
            ("episode", stored.episode_count, scan.count),
            ("consolidated", stored.consolidated_count, scan.consolidated),
        ):
            if settled and says != finds:
                r.diffs.append(f"vault: the {what} counter says {says} but a scan finds {finds}")
        _check_tiers(r, backend, scan, after[0] if after else None)
    finally:
        backend.close()
    _check_index(r, settings, scan, after[1] if after else None, vault_at is not None)
    root = resolve_path(str(graph_dir(settings)))
    graphs, leftovers = read_graphs(root)
    latest = _check_graphs(r, graphs, leftovers, root, scan)
    if sched_at is not None:
        served = rpc.latest_graph(sched_at)
        on_disk = latest.version if latest else 0
        if served != on_disk:
            now = read_graphs(root)[0]
            if (now[-1].version if now else 0) != on_disk:
                r.unsettled.append("a graph version was committed during the check")
            else:
                r.diffs.append(
                    f"graphs: the running scheduler serves version {served} but {root} holds "
                    f"{on_disk} as the latest (is it configured with another graph_dir?)"
                )
    # The learner is checked against the newest version that loads (a damaged latest is
    # reported above; it should not also make every learner concept look unknown).
    usable = next((g for g in reversed(graphs) if g.ok), None)
    learner_digest = _check_learner(r, settings, scan, usable)
    r.fingerprint = {
        "vault": {
            "episodes": scan.count,
            "consolidated": scan.consolidated,
            "with_embedding": len(scan.vectors),
            "content_sha256": scan.digest,
        },
        "graphs": {str(g.version): g.digest for g in graphs},
        "learner_sha256": learner_digest,
    }
    up = [name for name, at in (("vault", vault_at), ("scheduler", sched_at)) if at]
    if up:
        r.notes.append(f"running, checked through their RPCs as well: {', '.join(up)}")
    return r
