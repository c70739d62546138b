"""tori-ops backup / restore hold every namespace: each tenant's episodes, graphs, pruner backups
and learner state come back as they were, and a namespace the backup does not hold is left alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg

from mcp_services.common.config import load_config
from mcp_services.common.namespaces import DEFAULT
from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.namespaces import namespace_config, postgres_schema
from mcp_services.ops.transfer import iter_backend
from tests.conftest import service_environ
from tests.episodic_vault.test_backend_contract import POSTGRES_DSN
from tests.ops.runner import ops
from tests.ops.test_backup import N, _populate

SPACES = (DEFAULT, "bob", "team.alice:prod")


def _episodes(env: dict[str, str], namespace: str) -> list[tuple[str, str, bool, int]]:
    """(id, content hash, consolidated, graph version) of every episode in the namespace."""
    backend = open_backend(namespace_config(load_config(environ=env).vault, namespace))
    try:
        return [
            (e.id, e.content_hash, e.consolidated, e.graph_version) for e in iter_backend(backend)
        ]
    finally:
        backend.close()


def _files(root: Path) -> dict[str, bytes]:
    """Every service file (graphs, pruner backups, learner state) under root, by path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*.npz"))
        if "before-restore" not in str(p) and not p.name.startswith(".")
    }


def test_every_namespace_is_backed_up_and_restored_byte_for_byte(tmp_path: Path) -> None:
    """Three namespaces with distinct data: the backup lists each, a restore into an empty fleet
    gives each its own episodes (ids, hashes, consolidation) and files back, byte for byte."""
    src = service_environ(tmp_path / "src")
    for ns in SPACES:
        _populate(src, ns)
    out = tmp_path / "backup"
    made = ops(src, "backup", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert "warning" not in made.stderr
    assert "(3 namespaces, 15 files, checksummed)" in made.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["namespaces"]) == ["bob", "team.alice:prod"]
    assert manifest["namespaces"]["bob"]["vault"]["files"] == ["vault.db"]
    assert "namespaces/bob/graphs/v000000000002.npz" in manifest["sha256"]

    originals = {ns: _episodes(src, ns) for ns in SPACES}
    lost = tmp_path / "lost"
    (tmp_path / "src").rename(lost)  # the host is gone; its copy stays here to compare with
    dst = service_environ(tmp_path / "dst")
    done = ops(dst, "restore", "--from", str(out))
    assert done.returncode == 0, done.stderr
    assert "namespace bob: graphs: 2 files" in done.stdout
    for ns in SPACES:
        episodes = _episodes(dst, ns)
        assert episodes == originals[ns]
        assert len(episodes) == N and sum(c for _, _, c, _ in episodes) == 30
    assert originals["bob"] != originals[DEFAULT]  # each its own content
    assert _files(tmp_path / "dst") == _files(lost)
    assert len(_files(lost)) == 12  # 3 namespaces x (2 graph versions, pruner, learner)
    assert (tmp_path / "dst" / "graphs" / "namespaces" / "bob" / "v000000000002.npz").exists()


def test_restore_with_force_replaces_each_namespace_and_leaves_others_alone(
    tmp_path: Path,
) -> None:
    """Over a fleet holding bob and carol, restore refuses without --force naming bob's data;
    with --force bob's and the default's are replaced (the old moved aside under names no
    service takes for a namespace) and carol, absent from the backup, keeps her data."""
    src = service_environ(tmp_path / "src")
    for ns in (DEFAULT, "bob"):
        _populate(src, ns)
    out = tmp_path / "backup"
    assert ops(src, "backup", "--out", str(out)).returncode == 0

    root = tmp_path / "dst"
    dst = service_environ(root)
    _populate(dst, "bob")
    _populate(dst, "carol")
    carol = {k: v for k, v in _files(root).items() if "carol" in k}
    stale = root / "graphs" / "namespaces" / "bob" / "v000000000003.npz"
    stale.write_bytes(b"a version the backup does not hold")
    refused = ops(dst, "restore", "--from", str(out))
    assert refused.returncode == 1
    assert "namespace bob: " in refused.stderr and "pass --force" in refused.stderr

    forced = ops(dst, "restore", "--from", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "namespace carol: not in the backup, left as it is" in forced.stdout
    assert {k: v for k, v in _files(root).items() if "carol" in k} == carol
    assert len(_episodes(dst, "carol")) == N
    assert not stale.exists()
    aside = list((root / "graphs" / "namespaces").glob(".bob.before-restore-*"))
    assert len(aside) == 1 and (aside[0] / "v000000000003.npz").exists()
    names = sorted(p.name for p in (root / "graphs" / "namespaces").iterdir())
    assert [n for n in names if not n.startswith(".")] == ["bob", "carol"]
    assert _episodes(dst, "bob") == _episodes(src, "bob")
    assert _files(root / "graphs" / "namespaces" / "bob") == _files(
        tmp_path / "src" / "graphs" / "namespaces" / "bob"
    )


def _only_the_vault_names_namespaces(root: Path) -> None:
    """Remove the graph, pruner and learner directories of other namespaces under root."""
    for where in [p for p in root.rglob("namespaces") if p.is_dir()]:
        shutil.rmtree(where)


def test_a_redis_vault_backs_up_every_namespace_and_postgres_asks_for_unnamed_ones(
    tmp_path: Path, redis_prefix: str, pg_schema: str
) -> None:
    """Redis: bob's keys are found and his episodes restored into bob's keys of a fresh prefix.
    PostgreSQL: a schema of a namespace nothing else names refuses the backup, naming the
    schema and --namespace; with --namespace bob his episodes are in the backup."""
    src = service_environ(
        tmp_path / "src", VAULT_BACKEND="redis", VAULT_REDIS_KEY_PREFIX=redis_prefix
    )
    for ns in (DEFAULT, "bob"):
        _populate(src, ns)
    _only_the_vault_names_namespaces(tmp_path / "src")
    out = tmp_path / "redis-backup"
    made = ops(src, "backup", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert "namespace bob: vault    1 file(s)" in made.stdout
    dst = service_environ(
        tmp_path / "dst", VAULT_BACKEND="redis", VAULT_REDIS_KEY_PREFIX=f"{redis_prefix}copy:"
    )
    done = ops(dst, "restore", "--from", str(out))
    assert done.returncode == 0, done.stderr
    assert f"namespace bob: vault: {N} episodes" in done.stdout
    for ns in (DEFAULT, "bob"):
        assert _episodes(dst, ns) == _episodes(src, ns)

    pg = service_environ(tmp_path / "pg", VAULT_BACKEND="postgres", VAULT_POSTGRES_SCHEMA=pg_schema)
    bob_schema = postgres_schema(pg_schema, "bob")
    try:
        for ns in (DEFAULT, "bob"):
            _populate(pg, ns)
        _only_the_vault_names_namespaces(tmp_path / "pg")
        refused = ops(pg, "backup", "--out", str(tmp_path / "pg-1"))
        assert refused.returncode == 1 and bob_schema in refused.stderr
        assert "--namespace NS" in refused.stderr
        named = ops(pg, "backup", "--out", str(tmp_path / "pg-2"), "--namespace", "bob")
        assert named.returncode == 0, named.stderr
        manifest = json.loads((tmp_path / "pg-2" / "manifest.json").read_text())
        assert manifest["namespaces"]["bob"]["vault"]["episodes"] == N
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{bob_schema}" CASCADE')
