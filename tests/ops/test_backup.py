"""tori-ops backup / restore: every service's data, checksummed, restored identical."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mcp_services.common.config import load_config
from mcp_services.common.namespaces import DEFAULT, namespace_dir
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.namespaces import namespace_config
from mcp_services.episodic_vault.rpc.validation import validate_episode
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.sleep_scheduler.adapters.graph_store import GraphStore
from mcp_services.sleep_scheduler.domain.concept_index import ConceptIndex
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph
from tests.conftest import service_environ
from tests.ops.runner import ops

N = 120


def _populate(env: dict[str, str], namespace: str = DEFAULT) -> None:
    """A vault with episodes (some consolidated), two graph versions, a pruner backup file and
    a learner state file, each where its service keeps ``namespace``'s data; the content differs
    by namespace."""
    settings = load_config(environ=env)
    backend = open_backend(namespace_config(settings.vault, namespace))
    now = int(time.time() * 1000)
    eps = [
        validate_episode(
            pb.Episode(
                id=f"ep-{i}",
                activation=pb.ConceptActivation(
                    concept_ids=["a", f"{namespace}:c{i % 9}"], strengths=[1, 0.5]
                ),
                embedding=[0.1 + i % 3] * settings.vault.embedding_dim,
            ),
            settings.vault,
            now,
        )
        for i in range(N)
    ]
    backend.put_many(eps, now)
    backend.mark_consolidated([e.id for e in eps[:30]], 2)
    backend.close()
    from mcp_services.koopman_learner.server import data_dir
    from mcp_services.sleep_scheduler.server import graph_dir
    from mcp_services.sparse_pruner.server import backup_root

    store = GraphStore(namespace_dir(Path(graph_dir(settings)), namespace), keep=5)
    index = ConceptIndex(("a", "b", namespace))
    w = sp.csr_matrix(np.array([[0, 1.0, 0], [1.0, 0, -0.5], [0, -0.5, 0]]))
    g1 = store.commit(0, ConceptGraph(index, w, np.zeros(3)), None, None, "consolidation")
    store.commit(g1.meta.version, ConceptGraph(index, w * 2, np.ones(3)), None, None, "pruner")
    pruner = namespace_dir(Path(backup_root(settings)), namespace)
    pruner.mkdir(parents=True, exist_ok=True)
    (pruner / "b-000001.npz").write_bytes(f"pruner backup bytes of {namespace}".encode())
    koopman = namespace_dir(Path(data_dir(settings)), namespace)
    koopman.mkdir(parents=True, exist_ok=True)
    (koopman / "state.npz").write_bytes(f"learner state bytes of {namespace}".encode())


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".npz",) and "before-restore" not in str(p)
    }


def test_backup_then_restore_gives_the_same_data(tmp_path: Path) -> None:
    src_env = service_environ(tmp_path / "src")
    _populate(src_env)
    out = tmp_path / "backup"
    made = ops(src_env, "backup", "--out", str(out))
    assert made.returncode == 0, made.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["components"]["graphs"]["files"] == ["v000000000001.npz", "v000000000002.npz"]
    assert len(manifest["sha256"]) == 5  # vault.db, 2 graph versions, pruner, learner

    dst_env = service_environ(tmp_path / "dst")
    restored = ops(dst_env, "restore", "--from", str(out))
    assert restored.returncode == 0, restored.stderr
    # The vault: same ids, hashes, consolidation state, counters.
    src_db = Path(load_config(environ=src_env).vault.sqlite.path)
    dst_db = Path(load_config(environ=dst_env).vault.sqlite.path)
    verify = ops(
        dst_env, "verify-consistency", "--backend", f"sqlite:path={src_db}",
        "--against", f"sqlite:path={dst_db}",
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout
    assert f"{N} episodes, 30 consolidated" in verify.stdout
    # The other services' files, byte for byte, and the graph store reads them.
    assert _tree(tmp_path / "dst") == _tree(tmp_path / "src")
    from mcp_services.sleep_scheduler.server import graph_dir

    dst_store = GraphStore(Path(graph_dir(load_config(environ=dst_env))), keep=5)
    assert dst_store.latest_version() == 2
    assert dst_store.read(2).meta.author == "pruner"

    # A second restore over existing data is refused, then done with --force (moved aside).
    again = ops(dst_env, "restore", "--from", str(out))
    assert again.returncode == 1 and "pass --force" in again.stderr
    forced = ops(dst_env, "restore", "--from", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert list(dst_db.parent.glob("vault.db.before-restore-*"))


def test_restore_refuses_damage_and_a_running_fleet(tmp_path: Path) -> None:
    src_env = service_environ(tmp_path / "src")
    _populate(src_env)
    out = tmp_path / "backup"
    assert ops(src_env, "backup", "--out", str(out)).returncode == 0
    assert ops(src_env, "backup", "--out", str(out)).returncode == 1  # not an empty dir

    dst_env = service_environ(tmp_path / "dst")
    settings = load_config(environ=dst_env)
    with ServerThread("episodic-vault", "episodic_vault", VaultService, settings):
        busy = ops(dst_env, "restore", "--from", str(out))
    assert busy.returncode == 1
    assert "services are running: episodic_vault" in busy.stderr and "make down" in busy.stderr

    damaged = out / "graphs" / "v000000000002.npz"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    bad = ops(service_environ(tmp_path / "dst2"), "restore", "--from", str(out))
    assert bad.returncode == 1
    assert "graphs/v000000000002.npz does not match its checksum" in bad.stderr
