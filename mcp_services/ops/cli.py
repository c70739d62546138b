"""`tori-ops`: the operators' toolkit, one entry point with a subcommand per job.

Each subcommand is also its own module: `python -m mcp_services.ops.<module>`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Any

# subcommand -> (module, its add-arguments function, its run function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "validate-config": (
        "validate_config", "add_arguments", "run",
        "check every config file and key, per environment",
    ),
    "health-check": (
        "health_check", "add_arguments", "run",
        "services, Redis, vault backend; exit 1 on any failure",
    ),
    "export": (
        "transfer", "add_export_arguments", "run_export",
        "stream a vault backend's episodes to JSONL (resumable)",
    ),
    "import": (
        "transfer", "add_import_arguments", "run_import",
        "load a JSONL export into a vault backend (resumable)",
    ),
    "verify-consistency": (
        "consistency", "add_arguments", "run",
        "compare two backends, one with its counters, or (--services) the services' data; "
        "exit 1 on any difference",
    ),
    "migrate": (
        "schema", "add_migrate_arguments", "run_migrate",
        "bring a vault store to this release's schema (--check: report only; never down)",
    ),
    "init-db": (
        "schema", "add_init_arguments", "run_init",
        "create an empty vault store (directories, schema, keys); safe to repeat",
    ),
    "diagnostic": (
        "schema", "add_diagnostic_arguments", "run_diagnostic",
        "connect to a vault backend: latency, sizes, schema, settings in force",
    ),
    "backup": (
        "backup", "add_backup_arguments", "run_backup",
        "consistent online snapshot of every service's data, checksummed",
    ),
    "restore": (
        "backup", "add_restore_arguments", "run_restore",
        "restore a backup (fleet stopped; --force moves existing data aside)",
    ),
}  # fmt: skip


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"mcp_services.ops.{COMMANDS[name][0]}")


def _fn(name: str, which: int) -> Any:
    return getattr(_module(name), COMMANDS[name][which])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tori-ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (*_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=_module(name).__doc__)
        _fn(name, 1)(p)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = _fn(args.command, 2)(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
