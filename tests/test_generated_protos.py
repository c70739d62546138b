"""The committed generated code matches what `make proto` produces from proto/."""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gen_protos  # noqa: E402


def _files(root: Path) -> dict[Path, Path]:
    return {
        p.relative_to(root): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


class TestGeneratedProtos:
    def test_committed_code_is_what_make_proto_generates(self, tmp_path: Path) -> None:
        """Regenerating into a temp dir gives byte-identical files: the committed code is not stale."""
        fresh = tmp_path / "gen"
        gen_protos.generate(fresh)
        committed, generated = _files(gen_protos.DEFAULT_OUT), _files(fresh)
        assert sorted(committed) == sorted(generated), "run `make proto` and commit the result"
        stale = [
            str(rel)
            for rel in generated
            if not filecmp.cmp(generated[rel], committed[rel], shallow=False)
        ]
        if stale:
            pytest.fail(f"stale generated files {stale}: run `make proto` and commit the result")

    def test_every_package_is_versioned(self) -> None:
        """Each proto declares a versioned package tori.<name>.v1 matching its folder."""
        for proto in (ROOT / "proto").rglob("*.proto"):
            rel = proto.relative_to(ROOT / "proto").parent
            expected = ".".join(rel.parts)
            assert f"package {expected};" in proto.read_text(), proto
            assert rel.parts[-1] == "v1"
