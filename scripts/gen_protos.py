"""Regenerate the Python code for proto/ into mcp_services/gen/.

Run through `make proto`. grpcio-tools and mypy-protobuf are pinned in pyproject.toml so the
output is reproducible; the generated files (with typed .pyi stubs for messages and gRPC stubs) are
committed, excluded from lint, and tests/test_generated_protos.py fails when they are stale.

protoc writes imports rooted at the proto path (`from tori.events.v1 import ...`); they are
rewritten to live under `mcp_services.gen` so the generated code is an ordinary subpackage.

Usage: python scripts/gen_protos.py [--out DIR]   (default: mcp_services/gen)
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "mcp_services" / "gen"
PACKAGE = "mcp_services.gen"

_IMPORT_RE = re.compile(r"^(from|import) tori(\.|\s)", re.MULTILINE)


def _rewrite_imports(text: str) -> str:
    return _IMPORT_RE.sub(lambda m: f"{m.group(1)} {PACKAGE}.tori{m.group(2)}", text)


def generate(out: Path) -> None:
    """Generate every proto under proto/ into `out`, replacing what was there."""
    import grpc_tools
    from grpc_tools import protoc  # imported late: only this script needs grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # mypy-protobuf's plugins write typed stubs for the messages and for the gRPC stubs/servicers.
    bindir = Path(sys.executable).parent
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed; see the messages above")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "__init__.py").write_text('"""Generated from proto/ by scripts/gen_protos.py."""\n')
        for src in sorted(Path(tmp).rglob("*")):
            rel = src.relative_to(tmp)
            dst = out / rel
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.write_text(_rewrite_imports(src.read_text()))
        # Every directory is a regular package so the imports resolve without namespace tricks.
        for d in [p for p in out.rglob("*") if p.is_dir() and p.name != "__pycache__"]:
            init = d / "__init__.py"
            if not init.exists():
                init.write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
