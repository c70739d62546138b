"""`tori-ops`: the operators' toolkit, one entry point with a subcommand per job.

Each subcommand is also its own module: `python -m mcp_services.ops.<module>`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate-config": ("validate_config", "check every config file and key, per environment"),
    "health-check": ("health_check", "services, Redis, vault backend; exit 1 on any failure"),
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"mcp_services.ops.{COMMANDS[name][0]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tori-ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        mod = _module(name)
        p = sub.add_parser(name, help=help_text, description=mod.__doc__)
        mod.add_arguments(p)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = _module(args.command).run(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
