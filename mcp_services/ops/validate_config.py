"""`tori-ops validate-config`: check every config file and every key, as each environment sees it.

Each environment is the base file plus one overlay (config/<env>.yaml), interpolated with the
current environment and validated by the same schema the services use, so an error here is the
error a service would stop with: the dotted key, what is wrong, and where to fix it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mcp_services.common.config import DEFAULT_CONFIG_DIR, ConfigError, load_config


def environments(config_dir: Path) -> list[str]:
    """Every overlay in the directory (base.yaml is the base, not an environment)."""
    return sorted(p.stem for p in config_dir.glob("*.yaml") if p.stem != "base")


def validate(config_dir: Path, envs: list[str] | None = None) -> dict[str, str | None]:
    """``{env: None when valid, else the error text}``."""
    results: dict[str, str | None] = {}
    for env in envs or environments(config_dir):
        try:
            load_config(env, config_dir, os.environ)
            results[env] = None
        except ConfigError as exc:
            results[env] = str(exc)
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config-dir",
        type=Path,
        default=Path(os.environ.get("TORI_CONFIG_DIR") or DEFAULT_CONFIG_DIR),
        help="directory holding base.yaml and the overlays (default: $TORI_CONFIG_DIR or config/)",
    )
    p.add_argument(
        "--env", action="append", help="check only this environment (repeatable; default: all)"
    )


def run(args: argparse.Namespace) -> int:
    config_dir: Path = args.config_dir
    if not (config_dir / "base.yaml").is_file():
        print(f"error: {config_dir}/base.yaml does not exist; pass --config-dir", file=sys.stderr)
        return 2
    results = validate(config_dir, args.env)
    if not results:
        print(f"error: no overlay (<env>.yaml) in {config_dir}", file=sys.stderr)
        return 2
    for env, error in results.items():
        if error is None:
            print(f"ok      {env}: base.yaml + {env}.yaml")
        else:
            print(f"INVALID {env}: {error}")
    bad = [env for env, error in results.items() if error is not None]
    print(f"{len(results) - len(bad)}/{len(results)} environments valid")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tori-ops validate-config", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
