"""tori-ops export / import / verify-consistency per namespace, between real backends (SQLite,
Redis, PostgreSQL): each namespace's episodes travel to the same namespace, every line of output
names its namespace, and a difference in one namespace is reported under its name."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mcp_services.common.config import load_config
from mcp_services.common.namespaces import DEFAULT
from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.namespaces import namespace_config, postgres_schema
from mcp_services.episodic_vault.rpc.validation import validate_episode
from mcp_services.episodic_vault.settings import VaultConfig
from mcp_services.ops.backend_spec import vault_config
from mcp_services.ops.transfer import iter_backend
from tests.conftest import service_environ
from tests.episodic_vault.test_backend_contract import POSTGRES_DSN, REDIS_URL
from tests.ops.runner import ops
from tests.ops.test_backup import _populate
from tests.ops.test_transfer import _episode

# Distinct ids and counts per namespace, so a namespace mixed up with another shows.
SIZES = {DEFAULT: 40, "bob": 25}


def _fill(spec: str, namespace: str, start: int, stop: int) -> None:
    cfg = namespace_config(vault_config(spec), namespace)
    backend = open_backend(cfg)
    try:
        now = int(time.time() * 1000)
        backend.put_many([validate_episode(_episode(i), cfg, now) for i in range(start, stop)], now)
        backend.mark_consolidated([f"ep-{start:05d}"], 3)
    finally:
        backend.close()


def _held(cfg: VaultConfig, namespace: str) -> list[tuple[str, str, bool, int]]:
    backend = open_backend(namespace_config(cfg, namespace))
    try:
        return [
            (e.id, e.content_hash, e.consolidated, e.graph_version) for e in iter_backend(backend)
        ]
    finally:
        backend.close()


@pytest.fixture
def source(tmp_path: Path) -> str:
    """A SQLite vault whose default namespace and bob hold different episodes."""
    spec = f"sqlite:path={tmp_path / 'src' / 'vault.db'}"
    _fill(spec, DEFAULT, 0, SIZES[DEFAULT])
    _fill(spec, "bob", 1000, 1000 + SIZES["bob"])
    return spec


@pytest.fixture
def pg_namespaced(pg_schema: str) -> Iterator[str]:
    """pg_schema, with bob's schema beside it dropped afterwards too."""
    yield pg_schema
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{postgres_schema(pg_schema, "bob")}" CASCADE')


class TestExportImportAll:
    def test_every_namespace_goes_to_its_own_namespace_in_redis(
        self, source: str, redis_prefix: str, tmp_path: Path
    ) -> None:
        """export --all writes one file per namespace, each header naming it; import --all into
        Redis puts each into the same namespace; verify-consistency checks both by name, and a
        difference in bob is reported as bob's."""
        out = tmp_path / "export"
        exported = ops(None, "export", "--backend", source, "--all", "--out", str(out))
        assert exported.returncode == 0, exported.stderr
        lines = exported.stdout.splitlines()
        assert [line.split(":")[0] for line in lines] == ["namespace default", "namespace bob"]
        assert "namespace bob: exported 25 episodes" in exported.stdout
        header = json.loads((out / "bob.jsonl").read_text().splitlines()[0])
        assert header["namespace"] == "bob"

        target = f"redis:url={REDIS_URL},key_prefix={redis_prefix}"
        imported = ops(None, "import", "--backend", target, "--all", "--in", str(out))
        assert imported.returncode == 0, imported.stderr
        assert "namespace bob: imported bob.jsonl" in imported.stdout
        assert "25 created, 0 existing, 1 marked consolidated" in imported.stdout
        for ns in SIZES:
            assert _held(vault_config(target), ns) == _held(vault_config(source), ns)

        verified = ops(None, "verify-consistency", "--backend", source, "--against", target)
        assert verified.returncode == 0, verified.stdout
        assert "namespace bob: A: " in verified.stdout and "25 episodes" in verified.stdout
        assert "namespace default: consistent" in verified.stdout
        assert verified.stdout.rstrip().endswith("\nconsistent")

        bob = open_backend(namespace_config(vault_config(target), "bob"))
        assert bob.delete("ep-01003")
        bob.close()
        differs = ops(None, "verify-consistency", "--backend", source, "--against", target)
        assert differs.returncode == 1
        assert "namespace bob: DIFF only in A: 1 (ep-01003)" in differs.stdout
        assert "namespace default: consistent" in differs.stdout
        assert differs.stdout.rstrip().endswith("NOT consistent")


class TestOneNamespace:
    def test_a_file_goes_to_the_namespace_its_header_names_in_postgres(
        self, source: str, pg_namespaced: str, tmp_path: Path
    ) -> None:
        """export --namespace bob, then import without --namespace: the episodes land in bob's
        PostgreSQL schema, not the default's; --namespace bob checks only bob."""
        out = tmp_path / "bob.jsonl"
        exported = ops(None, "export", "--backend", source, "--namespace", "bob", "--out", str(out))
        assert exported.returncode == 0, exported.stderr
        target = f"postgres:dsn={POSTGRES_DSN},schema_name={pg_namespaced}"
        imported = ops(None, "import", "--backend", target, "--in", str(out))
        assert imported.returncode == 0, imported.stderr
        assert imported.stdout.startswith("namespace bob: ")
        assert _held(vault_config(target), "bob") == _held(vault_config(source), "bob")
        assert _held(vault_config(target), DEFAULT) == []
        verified = ops(
            None, "verify-consistency", "--backend", source, "--against", target,
            "--namespace", "bob",
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout
        *lines, verdict = verified.stdout.splitlines()
        assert all(line.startswith("namespace bob: ") for line in lines) and verdict == "consistent"

    def test_a_header_naming_a_path_is_refused_before_anything_is_written(
        self, source: str, tmp_path: Path
    ) -> None:
        """A file whose header names ../x as its namespace is refused (exit 2, naming line 1's
        namespace); no store is created anywhere."""
        out = tmp_path / "bob.jsonl"
        assert ops(None, "export", "--backend", source, "--namespace", "bob", "--out", str(out))
        lines = out.read_text().splitlines()
        header = json.loads(lines[0]) | {"namespace": "../x"}
        out.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
        dst = tmp_path / "dst"
        r = ops(None, "import", "--backend", f"sqlite:path={dst / 'vault.db'}", "--in", str(out))
        assert r.returncode == 2 and "line 1: namespace: '../x' is not a namespace" in r.stderr
        assert not dst.exists() and not (tmp_path / "x").exists()

    def test_two_namespaces_without_all_are_refused(self, source: str, tmp_path: Path) -> None:
        """export names one namespace per file: two --namespace without --all is exit 2."""
        r = ops(
            None, "export", "--backend", source, "--namespace", "bob", "--namespace", "carol",
            "--out", str(tmp_path / "x.jsonl"),
        )  # fmt: skip
        assert r.returncode == 2 and "give one namespace, or --all" in r.stderr


def test_services_check_names_the_namespace_that_differs(tmp_path: Path) -> None:
    """verify-consistency --services checks every namespace's vault and graphs: consistent for
    both, then bob's damaged latest graph is a DIFF under bob's name only (text and JSON)."""
    env = service_environ(tmp_path)
    for ns in SIZES:
        _populate(env, ns)
    settings = load_config(environ=env)
    for state in (tmp_path / "data" / "koopman").rglob("state.npz"):
        state.unlink()  # _populate's learner bytes are not a learner state
    ok = ops(env, "verify-consistency", "--services")
    assert ok.returncode == 0, ok.stdout
    assert "namespace bob: consistent" in ok.stdout and ok.stdout.rstrip().endswith("consistent")

    from mcp_services.sleep_scheduler.server import graph_dir

    latest = Path(graph_dir(settings)) / "namespaces" / "bob" / "v000000000002.npz"
    latest.write_bytes(latest.read_bytes()[:100])
    bad = ops(env, "verify-consistency", "--services")
    assert bad.returncode == 1
    diffs = [line for line in bad.stdout.splitlines() if " DIFF " in line]
    assert diffs and all(line.startswith("namespace bob: DIFF") for line in diffs)
    report = json.loads(ops(env, "verify-consistency", "--services", "--json").stdout)
    assert report["namespace"] == DEFAULT and report["diffs"] == []
    assert report["consistent"] is False and report["namespaces"]["bob"]["diffs"]
