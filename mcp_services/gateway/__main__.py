"""python -m mcp_services.gateway [--stdio] | keygen [--file F] [--tenant T] | canary PERCENT

(no command)   serve MCP over streamable HTTP on gateway.port (8765) at gateway.path (/mcp)
--stdio        serve MCP over stdin/stdout (desktop clients); acts with GATEWAY_API_KEY
keygen         append a new API key to the key file (mode 0600) and print it once
revoke KEY     refuse KEY from the gateway's next reload on
canary P       route P percent of callers to the canary (written to gateway.runtime_file;
               a running gateway applies it within gateway.reload_interval_s)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from mcp_services.common.config import ConfigError, load_config, resolve_path
from mcp_services.common.config_schema import Settings


def _settings_or_exit() -> Settings:
    try:
        return load_config()
    except ConfigError as exc:
        print(f"mcp-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _key_file(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    path = _settings_or_exit().gateway.api_keys_file
    if not path:
        print(
            "mcp-gateway: no key file configured; pass --file or set GATEWAY_API_KEYS_FILE",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return resolve_path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mcp_services.gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stdio", action="store_true", help="serve over stdin/stdout")
    sub = parser.add_subparsers(dest="command")
    kg = sub.add_parser("keygen", help="append a new API key to the key file")
    kg.add_argument("--file", help="key file (default: gateway.api_keys_file)")
    kg.add_argument("--tenant", default="", help="tenant the key acts for (routing, isolation)")
    rv = sub.add_parser("revoke", help="revoke an API key")
    rv.add_argument("key")
    rv.add_argument("--file", help="key file (default: gateway.api_keys_file)")
    cn = sub.add_parser("canary", help="set the canary share of callers, 0-100")
    cn.add_argument("percent", type=float)
    args = parser.parse_args(argv)

    if args.command == "keygen":
        from mcp_services.gateway.keygen import append_key

        path = _key_file(args.file)
        key = append_key(path, args.tenant)
        print(key)
        print(
            f"added to {path} (mode 0600); send it as 'Authorization: Bearer <key>'",
            file=sys.stderr,
        )
        return 0
    if args.command == "revoke":
        from mcp_services.gateway.keygen import revoke_key

        path = _key_file(args.file)
        revoke_key(path, args.key)
        print(f"revoked in {path}; the gateway refuses it from its next reload", file=sys.stderr)
        return 0
    if args.command == "canary":
        if not 0 <= args.percent <= 100:
            print("mcp-gateway: canary percent must be from 0 to 100", file=sys.stderr)
            return 2
        runtime = _settings_or_exit().gateway.runtime_file
        if not runtime:
            print(
                "mcp-gateway: gateway.runtime_file is empty; set GATEWAY_RUNTIME_FILE",
                file=sys.stderr,
            )
            return 2
        path = resolve_path(runtime)
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
        data = data if isinstance(data, dict) else {}
        data["canary_percent"] = args.percent
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=True))
        os.replace(tmp, path)
        print(f"canary_percent: {args.percent:g} written to {path}", file=sys.stderr)
        return 0

    from mcp_services.gateway.app import main as serve

    return serve(stdio=args.stdio)


if __name__ == "__main__":
    sys.exit(main())
