"""tori-ops export / import / verify-consistency between real backends (SQLite, PostgreSQL, Redis)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.domain.backend import VaultBackend
from mcp_services.episodic_vault.rpc.validation import validate_episode
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.ops.backend_spec import vault_config
from mcp_services.ops.transfer import iter_backend
from tests.episodic_vault.test_backend_contract import POSTGRES_DSN, REDIS_URL
from tests.ops.runner import ops

N = 600
CONSOLIDATED = 150


def _episode(i: int) -> pb.Episode:
    msg = pb.Episode(
        id=f"ep-{i:05d}",
        tags=["ops", f"t{i % 3}"],
        source=pb.Source(type="test", id=str(i)),
        energy=0.1 * (i % 10),
        ref_count=i % 4,
        activation=pb.ConceptActivation(
            concept_ids=[f"c{i % 11}", f"c{(i + 1) % 11}"], strengths=[0.9, 0.3], phases=[0.1, -0.2]
        ),
        payload=bytes([i % 256]) * (i % 40),
        embedding=[float(i % 7 + 1) / 8.0] * 384,
        metadata={"i": str(i)},
    )
    if i % 5 == 0:  # some without a client timestamp: their hash is of the content without one
        return msg
    msg.timestamp.FromMilliseconds(1_700_000_000_000 + i)
    return msg


def _fill(spec: str, start: int, stop: int, *, consolidate: int = 0) -> None:
    cfg = vault_config(spec)
    backend = open_backend(cfg)
    try:
        now = int(time.time() * 1000)
        eps = [validate_episode(_episode(i), cfg, now) for i in range(start, stop)]
        for k in range(0, len(eps), 50):  # several batches, each with its own storage time
            backend.put_many(eps[k : k + 50], now + k)
        if consolidate:
            backend.mark_consolidated([e.id for e in eps[:consolidate]], 7)
    finally:
        backend.close()


def _all(spec: str) -> list[tuple[str, str, bool, int, int]]:
    backend: VaultBackend = open_backend(vault_config(spec))
    try:
        return sorted(
            (e.id, e.content_hash, e.consolidated, e.graph_version, e.stored_ms)
            for e in iter_backend(backend)
        )
    finally:
        backend.close()


@pytest.fixture
def source(tmp_path: Path) -> str:
    spec = f"sqlite:path={tmp_path / 'source.db'}"
    _fill(spec, 0, N, consolidate=CONSOLIDATED)
    return spec


class TestExportImport:
    def test_sqlite_to_postgres_is_identical(
        self,
        source: str,
        pg_schema: str,
        tmp_path: Path,
    ) -> None:
        target = f"postgres:dsn={POSTGRES_DSN},schema_name={pg_schema}"
        out = tmp_path / "export.jsonl"
        exported = ops(None, "export", "--backend", source, "--out", str(out))
        assert exported.returncode == 0, exported.stderr
        assert f"exported {N} episodes" in exported.stdout
        imported = ops(None, "import", "--backend", target, "--in", str(out))
        assert imported.returncode == 0, imported.stderr
        assert f"{N} created, 0 existing, {CONSOLIDATED} marked consolidated" in imported.stdout
        # Same ids, hashes, consolidation state, graph versions and storage times.
        assert _all(target) == _all(source)
        verified = ops(None, "verify-consistency", "--backend", source, "--against", target)
        assert verified.returncode == 0, verified.stdout
        assert f"{N} episodes, {CONSOLIDATED} consolidated" in verified.stdout
        assert verified.stdout.rstrip().endswith("consistent")
        # A second import changes nothing.
        again = ops(None, "import", "--backend", target, "--in", str(out))
        assert f"0 created, {N} existing, 0 marked consolidated" in again.stdout

    def test_readable_export_round_trips(self, source: str, tmp_path: Path) -> None:
        out = tmp_path / "readable.jsonl"
        made = ops(None, "export", "--backend", source, "--out", str(out), "--readable")
        assert made.returncode == 0, made.stderr
        first = json.loads(out.read_text().splitlines()[1])
        assert "body" not in first and first["episode"]["id"] == "ep-00000"
        target = f"sqlite:path={tmp_path / 'target.db'}"
        assert ops(None, "import", "--backend", target, "--in", str(out)).returncode == 0
        assert _all(target) == _all(source)

    def test_sqlite_to_redis(self, source: str, redis_prefix: str, tmp_path: Path) -> None:
        target = f"redis:url={REDIS_URL},key_prefix={redis_prefix}"
        out = tmp_path / "export.jsonl"
        assert ops(None, "export", "--backend", source, "--out", str(out)).returncode == 0
        assert ops(None, "import", "--backend", target, "--in", str(out)).returncode == 0
        assert _all(target) == _all(source)
        assert (
            ops(None, "verify-consistency", "--backend", target, "--against", source).returncode
            == 0
        )

    def test_export_resumes_after_new_data_and_a_torn_line(
        self, source: str, tmp_path: Path
    ) -> None:
        out = tmp_path / "export.jsonl"
        assert ops(None, "export", "--backend", source, "--out", str(out)).returncode == 0
        # The previous run died mid-line; then more episodes arrived.
        with out.open("a") as f:
            f.write('{"seq": 99999, "trunc')
        _fill(source, N, N + 40)
        resumed = ops(None, "export", "--backend", source, "--out", str(out), "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert "exported 40 episodes" in resumed.stdout
        lines = out.read_text().splitlines()
        ids = [
            pb.Episode.FromString(base64.b64decode(json.loads(line)["body"])).id
            for line in lines[1:]
        ]
        assert len(ids) == len(set(ids)) == N + 40

    def test_import_refuses_an_altered_line_and_resumes(self, source: str, tmp_path: Path) -> None:
        out = tmp_path / "export.jsonl"
        assert ops(None, "export", "--backend", source, "--out", str(out)).returncode == 0
        lines = out.read_text().splitlines(keepends=True)
        bad_lineno = 400  # 1-based; line 1 is the header
        good = lines[bad_lineno - 1]
        rec = json.loads(good)
        msg = pb.Episode.FromString(base64.b64decode(rec["body"]))
        msg.energy = 0.123456  # altered after export, checksum left as it was
        rec["body"] = base64.b64encode(msg.SerializeToString()).decode()
        lines[bad_lineno - 1] = json.dumps(rec) + "\n"
        out.write_text("".join(lines))
        target = f"sqlite:path={tmp_path / 'target.db'}"
        failed = ops(None, "import", "--backend", target, "--in", str(out), "--batch", "100")
        assert failed.returncode == 1
        assert f"line {bad_lineno}: checksum mismatch" in failed.stderr
        # The batches before the bad line were committed; nothing of the bad batch was.
        assert len(_all(target)) == 300
        lines[bad_lineno - 1] = good
        out.write_text("".join(lines))
        resumed = ops(
            None, "import", "--backend", target, "--in", str(out), "--batch", "100", "--resume"
        )
        assert resumed.returncode == 0, resumed.stderr
        assert "300 skipped (resume)" in resumed.stdout
        assert f"{N - 300} created, 0 existing" in resumed.stdout
        assert _all(target) == _all(source)


class TestVerifyConsistency:
    def test_reports_each_kind_of_difference(self, source: str, tmp_path: Path) -> None:
        out = tmp_path / "export.jsonl"
        target = f"sqlite:path={tmp_path / 'target.db'}"
        assert ops(None, "export", "--backend", source, "--out", str(out)).returncode == 0
        assert ops(None, "import", "--backend", target, "--in", str(out)).returncode == 0
        backend = open_backend(vault_config(target))
        try:
            assert backend.delete("ep-00003")
            backend.mark_consolidated(["ep-00500"], 9)
        finally:
            backend.close()
        _fill(target, N, N + 2)
        result = ops(None, "verify-consistency", "--backend", source, "--against", target)
        assert result.returncode == 1
        assert "DIFF only in A: 1 (ep-00003)" in result.stdout
        assert f"DIFF only in B: 2 (ep-{N:05d}, ep-{N + 1:05d})" in result.stdout
        assert "DIFF consolidation state differs: 1 (ep-00500)" in result.stdout
        assert "NOT consistent" in result.stdout

    def test_self_check_and_bad_specs(self, source: str) -> None:
        ok = ops(None, "verify-consistency", "--backend", source)
        assert ok.returncode == 0, ok.stdout
        assert f"{N} episodes, {CONSOLIDATED} consolidated" in ok.stdout
        bad_kind = ops(None, "verify-consistency", "--backend", "mysql:x=1")
        assert bad_kind.returncode == 2
        assert "must be one of sqlite, memory, redis, postgres" in bad_kind.stderr
        bad_key = ops(None, "export", "--backend", "sqlite:pth=/tmp/x.db", "--out", "/dev/null")
        assert bad_key.returncode == 2
        assert "vault.sqlite.pth: unknown key" in bad_key.stderr
