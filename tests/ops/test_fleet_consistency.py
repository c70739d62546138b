"""tori-ops verify-consistency --services: the services' own data checked against each other.

One real fleet (vault on SQLite with its vector index, scheduler, learner following the vault,
a real Redis) stores episodes, consolidates them twice and commits a pruner-style version; the
learner learns from the vault. The check must call that fleet consistent while it runs and once it
is stopped; then each kind of inconsistency is planted in the stopped fleet's files, reported by
name, and undone (the check is consistent again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from mcp_services.common.config import load_config
from mcp_services.common.config_schema import Settings
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.adapters.storage import index_dir, open_backend
from mcp_services.episodic_vault.rpc.validation import validate_episode
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vpb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from mcp_services.gen.tori.koopman.v1 import koopman_pb2, koopman_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.koopman_learner.domain.synthetic import oscillator_system, simulate
from mcp_services.koopman_learner.server import KoopmanLearnerService, data_dir
from mcp_services.sleep_scheduler.rpc.codec import commit_chunks, stored_of_chunks
from mcp_services.sleep_scheduler.server import SleepSchedulerService, graph_dir
from tests.conftest import service_environ
from tests.ops.runner import ops

DIM = 8
ASSEMBLIES = [[f"concept:a{a}-{i}" for i in range(6)] for a in range(3)]
TRACE_IDS = [f"concept:osc{i}" for i in range(6)]


@dataclass
class FleetData:
    env: dict[str, str]
    settings: Settings
    running_report: dict[str, Any]
    second_writer_report: dict[str, Any]


def _activation_episode(rng: np.random.Generator, k: int) -> vpb.Episode:
    members = ASSEMBLIES[k % len(ASSEMBLIES)]
    ids = [*members, f"concept:weak{k % 4}"]  # the weak concept never becomes active
    strengths = [1.0] * len(members) + [0.3]
    return vpb.Episode(
        id=f"act-{k}",
        tags=["ops"],
        source=vpb.Source(type="act"),
        activation=vpb.ConceptActivation(concept_ids=ids, strengths=strengths),
        embedding=rng.standard_normal(DIM).tolist(),
    )


def _trace_episodes(first: int, count: int) -> list[vpb.Episode]:
    system = oscillator_system(len(TRACE_IDS), [0.7], [-0.05], 0.1, seed=3)
    base = int(time.time()) - 3600
    out = []
    for k, values in enumerate(simulate(system, n_traces=count, length=40, seed=first)):
        frames = [
            vpb.Frame(
                offset_ms=t * 100,
                activation=vpb.ConceptActivation(
                    concept_ids=TRACE_IDS, strengths=np.clip(values[:, t], 0, 1).tolist()
                ),
            )
            for t in range(values.shape[1])
        ]
        out.append(
            vpb.Episode(
                id=f"trace-{first + k}",
                timestamp=Timestamp(seconds=base + 60 * (first + k)),
                source=vpb.Source(type="osc"),
                trace=frames,
            )
        )
    return out


def _put(stub: episodic_pb2_grpc.EpisodicVaultStub, eps: list[vpb.Episode]) -> None:
    reply = stub.PutEpisodes(iter([vpb.PutEpisodeRequest(episode=e) for e in eps]), timeout=60)
    assert reply.created == len(eps)


def _wait(condition: Any, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the fleet did not get there in time"
        time.sleep(0.1)


def verify(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = ops(env, "verify-consistency", "--services", "--json")
    assert result.returncode in (0, 1, 3), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


@pytest.fixture(scope="module")
def fleet_data(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> FleetData:
    """The fleet's data once the fleet is stopped, and what the check said while it ran."""
    var = tmp_path_factory.mktemp("fleet-consistency")
    env = service_environ(
        var,
        REDIS_URL=redis_url,
        VAULT_EMBEDDING_DIM=str(DIM),
        KCL_POLL_INTERVAL_S="0.2",
        SLEEP_PRESSURE_THRESHOLD="0",
    )
    settings = load_config(environ=env)
    servers: list[ServerThread] = []
    channels: list[grpc.Channel] = []
    try:
        for name, key, factory in (
            ("episodic-vault", "episodic_vault", VaultService),
            ("sleep-scheduler", "sleep_scheduler", SleepSchedulerService),
            ("koopman-learner", "koopman_learner", KoopmanLearnerService),
        ):
            servers.append(ServerThread(name, key, factory, settings).start())
        chans = [grpc.insecure_channel(f"127.0.0.1:{s.running.grpc_port}") for s in servers]
        channels.extend(chans)
        vault = episodic_pb2_grpc.EpisodicVaultStub(chans[0])
        sched = sleep_pb2_grpc.SleepSchedulerStub(chans[1])
        learner = koopman_pb2_grpc.KoopmanLearnerStub(chans[2])
        rng = np.random.default_rng(7)
        for first in (0, 40):  # two cycles: versions 1 and 2
            _put(vault, [_activation_episode(rng, first + k) for k in range(40)])
            _put(vault, _trace_episodes(first, 3))
            job = sched.StartConsolidation(
                sleep_pb2.StartConsolidationRequest(wait=True, trigger="test"), timeout=300
            )
            assert job.state == sleep_pb2.JOB_STATE_SUCCEEDED, job
        # A pruner-style commit: the latest graph with its weights halved (version 3).
        latest = stored_of_chunks(sched.ReadGraph(sleep_pb2.ReadGraphRequest()))
        g = latest.graph
        halved = type(g)(g.index, g.weights * 0.5, g.biases)
        reply = sched.CommitGraph(iter(commit_chunks(latest.meta.version, halved, author="test")))
        assert reply.header.version == 3

        def caught_up() -> bool:
            last = vault.GetStats(vpb.GetStatsRequest()).last_seq
            status = learner.GetProcessingStatus(koopman_pb2.GetProcessingStatusRequest())
            return bool(status.cursor == last and status.refits > 0)

        _wait(caught_up)
        _wait(lambda: (Path(data_dir(settings)) / "state.npz").exists())
        code, report = verify(env)
        assert code == 0, report
        # A second writer behind the running vault's back: an episode the vault never indexed.
        backend = open_backend(settings.vault)
        try:
            now = int(time.time() * 1000)
            stray = vpb.Episode(id="stray", embedding=[1.0] * DIM)
            backend.put_many([validate_episode(stray, settings.vault, now)], now)
            stray_code, stray_report = verify(env)
            assert backend.delete("stray")
        finally:
            backend.close()
        assert stray_code == 1, stray_report
    finally:
        for c in channels:
            c.close()
        for s in reversed(servers):
            s.stop()  # the vault saves its index as it stops
    return FleetData(env, settings, report, stray_report)


@contextlib.contextmanager
def restored_after(*paths: Path) -> Iterator[None]:
    """Put the files back as they were (and drop any created) when the block ends."""
    saved = {p: p.read_bytes() for p in paths if p.exists()}
    try:
        yield
    finally:
        for p in paths:
            if p in saved:
                p.write_bytes(saved[p])
            else:
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def moved_away(*paths: Path) -> Iterator[None]:
    """The files renamed to hidden names (which the graph store does not list) for the block."""
    away = [p.with_name(f".{p.name}.away") for p in paths]
    for src, dst in zip(paths, away, strict=True):
        shutil.move(src, dst)
    try:
        yield
    finally:
        for src, dst in zip(paths, away, strict=True):
            shutil.move(dst, src)


def _rewrite_npz(path: Path, change: dict[str, Any]) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: np.array(z[k]) for k in z.files}
    arrays.update(change)
    with path.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def _diffs(report: dict[str, Any]) -> str:
    return "\n".join(report["diffs"])


def reported(env: dict[str, str]) -> str:
    """The differences the check reports (it must report some)."""
    code, report = verify(env)
    assert code == 1, report
    return _diffs(report)


class TestCleanFleet:
    def test_a_running_fleet_is_consistent_through_its_rpcs(self, fleet_data: FleetData) -> None:
        """While the services run, the live index size and GetStats tiers match the backend."""
        report = fleet_data.running_report
        assert report["consistent"] and not report["diffs"]
        checked = "\n".join(report["checked"])
        assert "vault index (running vault): 80 vectors, one per episode" in checked
        assert "and the running vault's GetStats" in checked
        assert "graphs" in checked and "versions 1..3" in checked
        assert any("running, checked through their RPCs as well: vault, scheduler" in n
                   for n in report["notes"])  # fmt: skip

    def test_an_episode_the_running_vault_never_indexed(self, fleet_data: FleetData) -> None:
        """Written into its SQLite file by another process: the live index is one short."""
        diffs = _diffs(fleet_data.second_writer_report)
        assert (
            "the running vault indexes 80 vectors but the backend holds 81 episodes with a "
            "searchable embedding" in diffs
        )

    def test_a_stopped_fleet_is_consistent_and_fingerprinted(self, fleet_data: FleetData) -> None:
        """Stopped: the saved index is checked entry by entry; weak concepts are only noted."""
        code, report = verify(fleet_data.env)
        assert code == 0, report
        checked = "\n".join(report["checked"])
        assert "80 entries, 0 tombstones, 80 episodes with an embedding" in checked
        assert "vault tiers: LTM 86" in checked
        assert any("learner" in c and "cursor 87 (vault last seq 87)" in c
                   for c in report["checked"])  # fmt: skip
        fp = report["fingerprint"]
        assert fp["vault"]["episodes"] == 86 and fp["vault"]["with_embedding"] == 80
        assert sorted(fp["graphs"]) == ["1", "2", "3"] and fp["learner_sha256"]
        # The learner saw the second writer's episode after the running check, so only the
        # vault and the graphs are as they were then.
        live = fleet_data.running_report["fingerprint"]
        assert (fp["vault"], fp["graphs"]) == (live["vault"], live["graphs"])


class TestPlanted:
    def test_a_damaged_index_file(self, fleet_data: FleetData) -> None:
        path = index_dir(fleet_data.settings.vault, fleet_data.settings.paths.var_dir)
        assert path is not None
        faiss_file = path / "index.faiss"
        with restored_after(faiss_file):
            data = bytearray(faiss_file.read_bytes())
            data[len(data) // 2] ^= 0xFF
            faiss_file.write_bytes(bytes(data))
            diffs = reported(fleet_data.env)
            assert "manifest disagrees with the files or the config in ['index_sha256']" in diffs
        assert verify(fleet_data.env)[0] == 0

    def test_an_episode_missing_from_the_index(self, fleet_data: FleetData) -> None:
        """The files are intact (manifest re-signed) but one episode's entry is a tombstone."""
        path = index_dir(fleet_data.settings.vault, fleet_data.settings.paths.var_dir)
        assert path is not None
        labels_file, manifest_file = path / "labels.npy", path / "manifest.json"
        with restored_after(labels_file, manifest_file):
            labels = np.frombuffer(labels_file.read_bytes(), np.int64).reshape(-1, 2).copy()
            dropped = int(labels[5, 0])
            labels[5, 0] = -1
            labels_file.write_bytes(labels.tobytes())
            manifest = json.loads(manifest_file.read_text())
            manifest["labels_sha256"] = hashlib.sha256(labels.tobytes()).hexdigest()
            manifest_file.write_text(json.dumps(manifest))
            diffs = reported(fleet_data.env)
            assert f"1 episodes with an embedding are not indexed: seqs {dropped}" in diffs

    def test_an_index_entry_for_an_episode_the_backend_lost(self, fleet_data: FleetData) -> None:
        cfg = fleet_data.settings.vault
        db = Path(cfg.sqlite.path)
        files = [db.with_name(db.name + s) for s in ("", "-wal", "-shm")]
        with restored_after(*files):
            backend = open_backend(cfg)
            try:
                lost = backend.get("act-3")
                assert lost is not None and backend.delete("act-3")
            finally:
                backend.close()
            diffs = reported(fleet_data.env)
            assert (
                f"1 entries for episodes the backend does not hold (or holds without a "
                f"searchable embedding): seqs {lost.seq}" in diffs
            )
        assert verify(fleet_data.env)[0] == 0

    def test_a_tier_that_disagrees_with_consolidation(self, fleet_data: FleetData) -> None:
        db = Path(fleet_data.settings.vault.sqlite.path)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE episodes SET tier = 2 WHERE id = 'act-7'")
        try:
            diffs = reported(fleet_data.env)
            assert "1 episodes whose tier disagrees with their consolidation state" in diffs
            assert "act-7" in diffs
        finally:
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE episodes SET tier = 3 WHERE id = 'act-7'")
        assert verify(fleet_data.env)[0] == 0

    def test_a_graph_version_whose_index_does_not_match(self, fleet_data: FleetData) -> None:
        v2 = Path(graph_dir(fleet_data.settings)) / "v000000000002.npz"
        with restored_after(v2):
            with np.load(v2, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                biases = np.array(z["biases"])
            n = header["concept_count"]
            header["concept_count"] = n + 1
            _rewrite_npz(v2, {"header": np.asarray(json.dumps(header)), "biases": biases[:-1]})
            diffs = reported(fleet_data.env)
            assert f"graph version 2 ({v2}):" in diffs
            assert f"its header counts {n + 1} concepts but the concept index holds {n}" in diffs
            assert f"{n - 1} biases for {n} concepts" in diffs

    def test_a_reordered_concept_index(self, fleet_data: FleetData) -> None:
        v3 = Path(graph_dir(fleet_data.settings)) / "v000000000003.npz"
        with restored_after(v3):
            with np.load(v3, allow_pickle=False) as z:
                blob, offsets = np.array(z["ids_blob"]), np.array(z["ids_offsets"])
            ids = [bytes(blob[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]
            ids[0], ids[1] = ids[1], ids[0]
            lengths = np.cumsum([0, *map(len, ids)])
            _rewrite_npz(v3, {"ids_blob": np.frombuffer(b"".join(ids), np.uint8),
                              "ids_offsets": lengths.astype(np.int64)})  # fmt: skip
            diffs = reported(fleet_data.env)
            assert "graph version 3's concept index does not extend version 2's" in diffs

    def test_graphs_older_than_the_vault(self, fleet_data: FleetData) -> None:
        """Versions 2 and 3 gone (a graph backup older than the vault's restored): episodes
        consolidated into version 2 point past the newest version."""
        root = Path(graph_dir(fleet_data.settings))
        with moved_away(root / "v000000000002.npz", root / "v000000000003.npz"):
            diffs = reported(fleet_data.env)
            assert (
                "was consolidated into graph version 2 but the newest graph version is 1" in diffs
            )
        assert verify(fleet_data.env)[0] == 0

    def test_a_missing_middle_version(self, fleet_data: FleetData) -> None:
        with moved_away(Path(graph_dir(fleet_data.settings)) / "v000000000002.npz"):
            diffs = reported(fleet_data.env)
            assert (
                "graph versions 1 and 3 are both kept but the versions between them are " in diffs
            )

    def test_learner_state_naming_unknown_concepts(self, fleet_data: FleetData) -> None:
        state = Path(data_dir(fleet_data.settings)) / "state.npz"
        with restored_after(state):
            with np.load(state, allow_pickle=False) as z:
                ids = [str(c) for c in z["served_concept_ids"]]
            ids[0] = "concept:never-seen"
            _rewrite_npz(state, {"served_concept_ids": np.asarray(ids)})
            diffs = reported(fleet_data.env)
            assert (
                "learner: 1 concepts known to neither the graph nor any stored episode: "
                "concept:never-seen (modes)" in diffs
            )
        assert verify(fleet_data.env)[0] == 0

    def test_a_concept_only_the_vault_knows_is_noted_not_failed(
        self, fleet_data: FleetData
    ) -> None:
        """A concept never active (so never in the graph) but in stored episodes is counted."""
        state = Path(data_dir(fleet_data.settings)) / "state.npz"
        with restored_after(state):
            with np.load(state, allow_pickle=False) as z:
                ids = [str(c) for c in z["served_concept_ids"]]
            ids[0] = "concept:weak2"
            _rewrite_npz(state, {"served_concept_ids": np.asarray(ids)})
            code, report = verify(fleet_data.env)
            assert code == 0, report
            assert any(
                "in stored episodes but not (yet) in the graph's concept index" in n
                and "concept:weak2" in n
                for n in report["notes"]
            )

    def test_learner_cursor_beyond_the_vault(self, fleet_data: FleetData) -> None:
        state = Path(data_dir(fleet_data.settings)) / "state.npz"
        with restored_after(state):
            with np.load(state, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
            last = meta["cursor"]
            meta["cursor"] = last + 50
            blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
            _rewrite_npz(state, {"meta": blob})
            diffs = reported(fleet_data.env)
            assert (
                f"it has read the vault up to seq {last + 50} but the vault's last seq is {last}"
                in diffs
            )


class TestRunningWithAuth:
    def test_the_check_sends_the_configured_key(self, tmp_path: Path) -> None:
        """With API keys on, the check calls the vault with the configured key; without one it
        stops with an error naming the setting, not a traceback or a false difference."""
        env = service_environ(tmp_path / "var", VAULT_EMBEDDING_DIM=str(DIM), TORI_API_KEYS="k1")
        settings = load_config(environ=env)
        with ServerThread("episodic-vault", "episodic_vault", VaultService, settings):
            code, report = verify(env)
            assert code == 0, report
            assert any("running vault" in c for c in report["checked"])
            keyless = {**env, "TORI_API_KEYS": ""}
            refused = ops(keyless, "verify-consistency", "--services")
            assert refused.returncode == 2, refused.stdout
            assert "refused the check's call (UNAUTHENTICATED" in refused.stderr
            assert "TORI_API_KEYS_FILE" in refused.stderr
