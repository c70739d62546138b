"""Configuration: YAML files under config/, environment interpolation, validation.

Loading order:
  1. config/base.yaml
  2. config/<TORI_ENV>.yaml (the overlay; TORI_ENV defaults to "local"), deep-merged over the base
  3. `${VAR}` and `${VAR:-default}` in string values replaced from the environment ($$ is a
     literal $)
  4. validation against the schema: config_schema.py's shared sections and every service's
     registered section (mcp_services/<service>/settings.py); unknown keys are errors

Every failure raises ConfigError whose message names the key, what is wrong, and the fix.
TORI_CONFIG_DIR points at another config directory (containers use /app/config).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mcp_services.common.config_schema import Settings, settings_model
from mcp_services.common.secrets_mask import mask_secret

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_DIR = PROJECT_ROOT / "config"
DEFAULT_ENV = "local"

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and how to fix it."""


def _interpolate(value: str, key: str, environ: Mapping[str, str]) -> str:
    """Expand ${VAR}, ${VAR:-default} (the default may itself hold ${...}) and $$."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if not value.startswith("${", i):
            out.append(value[i])
            i += 1
            continue
        depth, j = 1, i + 2
        while j < len(value) and depth:
            if value.startswith("${", j):
                depth, j = depth + 1, j + 2
                continue
            depth -= value[j] == "}"
            j += 1
        if depth:
            raise ConfigError(f"{key}: unclosed ${{ in {value!r}; close it with }}")
        body = value[i + 2 : j - 1]
        name, sep, default = body.partition(":-")
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"{key}: {name!r} is not a variable name; write ${{NAME}} or ${{NAME:-default}}"
            )
        if name in environ:
            out.append(environ[name])
        elif sep:
            out.append(_interpolate(default, key, environ))
        else:
            raise ConfigError(
                f"{key}: environment variable {name} is not set; set it, or give a default "
                f"as ${{{name}:-value}}"
            )
        i = j
    return "".join(out)


def _interpolate_tree(node: Any, key: str, environ: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: _interpolate_tree(v, f"{key}.{k}" if key else str(k), environ)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate_tree(v, f"{key}[{i}]", environ) for i, v in enumerate(node)]
    if isinstance(node, str):
        return _interpolate(node, key, environ)
    return node


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Return base with overlay merged in: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for k, v in overlay.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, got {type(data).__name__}"
        )
    return data


def format_validation_error(exc: ValidationError, sources: str) -> str:
    """One line per problem: the dotted key, what is wrong, the value given, and where to fix it."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key; remove it or check its spelling ({sources})")
            continue
        given = err.get("input")
        shown = f" (got {mask_secret(key, given)!r})" if not isinstance(given, dict | list) else ""
        lines.append(f"{key}: {err['msg']}{shown}; fix it in {sources} or the variable it reads")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_raw(
    env: str | None = None,
    config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Merged and interpolated config tree, and a description of the files it came from."""
    environ = os.environ if environ is None else environ
    config_dir = Path(config_dir or environ.get("TORI_CONFIG_DIR") or DEFAULT_CONFIG_DIR)
    env = env or environ.get("TORI_ENV") or DEFAULT_ENV
    base_path = config_dir / "base.yaml"
    if not base_path.is_file():
        raise ConfigError(
            f"{base_path} does not exist; set TORI_CONFIG_DIR to the config directory"
        )
    tree = _read_yaml(base_path)
    overlay_path = config_dir / f"{env}.yaml"
    if not overlay_path.is_file():
        known = sorted(p.stem for p in config_dir.glob("*.yaml") if p.stem != "base")
        raise ConfigError(f"TORI_ENV={env!r} has no overlay {overlay_path}; use one of {known}")
    tree = deep_merge(tree, _read_yaml(overlay_path))
    tree = _interpolate_tree(tree, "", environ)
    return tree, f"{base_path.name} / {overlay_path.name}"


def config_files(
    env: str | None = None,
    config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Path]:
    """The files :func:`load_config` reads with the same arguments (base, then the overlay)."""
    environ = os.environ if environ is None else environ
    config_dir = Path(config_dir or environ.get("TORI_CONFIG_DIR") or DEFAULT_CONFIG_DIR)
    env = env or environ.get("TORI_ENV") or DEFAULT_ENV
    return [config_dir / "base.yaml", config_dir / f"{env}.yaml"]


def load_config(
    env: str | None = None,
    config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load, merge, interpolate and validate the configuration.

    `overrides` is a nested mapping merged last (used by tests and by UpdateConfig-style reloads).
    Raises ConfigError naming every offending key.
    """
    tree, sources = load_raw(env, config_dir, environ)
    if overrides:
        tree = deep_merge(tree, overrides)
    return validate_tree(tree, sources)


def validate_tree(tree: Mapping[str, Any], sources: str = "the config files") -> Settings:
    try:
        return settings_model().model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, sources)) from None


def resolve_path(path: str | Path) -> Path:
    """Relative paths in the config are relative to the project root, not the working directory."""
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p
