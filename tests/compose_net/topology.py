"""The compose model as an engine would run it, read from the files the engine reads.

docker-compose.yml and docker-compose.override.yml (merged as `docker compose` merges them: the
override's mappings merge key by key, its lists add to the base's, a command or entrypoint
replaces), with YAML anchors and `<<:` merge keys resolved by PyYAML and `${VAR}`,
`${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` and `$$` interpolated from a given "host"
environment, as compose does. The project image's ENV, WORKDIR, ENTRYPOINT and CMD come from the
Dockerfile's runtime stage, so a service runs `ENTRYPOINT + command` with `ENV + environment`
exactly as its container would. No Docker binary is needed (nor used).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.override.yml")
# Compose's defaults for a healthcheck block's missing fields (compose spec, "healthcheck").
HEALTH_DEFAULTS = {"interval": 30.0, "timeout": 30.0, "retries": 3, "start_period": 0.0}

Runner = Literal["project", "redis", "skipped"]


class TopologyError(Exception):
    """The compose files or the Dockerfile say something this reader cannot run; the message
    names the file, the key and the fix."""


_VAR_RE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_]\w*))")


def interpolate(value: str, environ: Mapping[str, str], where: str) -> str:
    """`value` with compose's variable syntax replaced from `environ`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        have = environ.get(name)
        unset_or_empty = not have
        if op in (":-", "-"):
            return arg if (unset_or_empty if op == ":-" else have is None) else str(have)
        if op in (":?", "?"):
            if unset_or_empty if op == ":?" else have is None:
                raise TopologyError(f"{where}: ${{{name}}} is required: {arg or 'set it'}")
            return str(have)
        if op in (":+", "+"):
            return arg if not (unset_or_empty if op == ":+" else have is None) else ""
        # A plain ${VAR} that is unset is an empty string (compose warns and goes on).
        return have or ""

    return _VAR_RE.sub(sub, value)


def interpolate_tree(node: Any, environ: Mapping[str, str], where: str = "") -> Any:
    if isinstance(node, dict):
        return {k: interpolate_tree(v, environ, f"{where}.{k}".strip(".")) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, environ, f"{where}[{i}]") for i, v in enumerate(node)]
    return interpolate(node, environ, where) if isinstance(node, str) else node


def _env_mapping(value: Any, where: str) -> dict[str, str | None]:
    """environment in either form (a mapping, or a list of "K=V" / "K"); None: from the host."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): None if v is None else _scalar(v) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, str | None] = {}
        for item in value:
            key, sep, val = str(item).partition("=")
            out[key] = val if sep else None
        return out
    raise TopologyError(f"{where}: environment must be a mapping or a list of K=V")


def _scalar(v: Any) -> str:
    # YAML booleans become "true"/"false" as compose writes them into the environment.
    return str(v).lower() if isinstance(v, bool) else str(v)


def _normalise(svc: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(svc)
    if "environment" in out:
        out["environment"] = _env_mapping(out["environment"], f"{where}.environment")
    deps = out.get("depends_on")
    if isinstance(deps, list):
        out["depends_on"] = {d: {"condition": "service_started"} for d in deps}
    for key in ("command", "entrypoint"):
        if isinstance(out.get(key), str):
            out[key] = shlex.split(out[key])
    return out


def merge_service(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into `base` by compose's rules for the keys this harness reads."""
    merged = dict(base)
    for key, value in over.items():
        old = merged.get(key)
        if key in ("command", "entrypoint") or old is None:
            merged[key] = value
        elif isinstance(old, dict) and isinstance(value, dict):
            # environment, depends_on, healthcheck (whose `test` list is replaced, not added to)
            merged[key] = {**old, **value}
        elif isinstance(old, list) and isinstance(value, list):
            merged[key] = old + [v for v in value if v not in old]
        else:
            merged[key] = value
    return merged


def duration_s(value: Any, where: str) -> float:
    """Compose durations ("5s", "1m30s", "500ms", or a number of seconds)."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value))
    if not parts or "".join(n + u for n, u in parts) != str(value):
        raise TopologyError(f"{where}: {value!r} is not a duration; write e.g. 5s or 1m30s")
    return sum(float(n) * units[u] for n, u in parts)


@dataclass(frozen=True)
class Image:
    """What the Dockerfile's runtime stage gives every container of the project image."""

    env: dict[str, str]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    workdir: str
    user: str


def _exec_form(text: str, where: str) -> tuple[str, ...]:
    if text.startswith("["):
        try:
            return tuple(str(a) for a in json.loads(text))
        except json.JSONDecodeError as exc:
            raise TopologyError(f"{where}: {text!r} is not a JSON array ({exc})") from None
    return ("/bin/sh", "-c", text)


def parse_dockerfile(path: Path, target: str | None = None) -> Image:
    """ENV, WORKDIR, USER, ENTRYPOINT and CMD of the stage `target` (default: the last one)."""
    text = path.read_text().replace("\\\n", " ")
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append((name, []))
        elif stages:
            stages[-1][1].append((instr, rest))
    if not stages:
        raise TopologyError(f"{path}: no FROM instruction")
    chosen = [s for s in stages if s[0] == target] if target else stages[-1:]
    if not chosen:
        raise TopologyError(f"{path}: no stage named {target!r}; build.target names one")
    env: dict[str, str] = {}
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir, user = "/", "root"
    for instr, rest in chosen[0][1]:
        where = f"{path.name}: {instr} {rest[:40]}"
        if instr == "ENV":
            words = shlex.split(rest)
            if words and "=" not in words[0]:  # the legacy `ENV KEY value` form
                env[words[0]] = " ".join(words[1:])
            else:
                for word in words:
                    key, _, val = word.partition("=")
                    env[key] = val
        elif instr == "ENTRYPOINT":
            # Docker: a new ENTRYPOINT clears the CMD inherited so far.
            entrypoint, cmd = _exec_form(rest, where), ()
        elif instr == "CMD":
            cmd = _exec_form(rest, where)
        elif instr == "WORKDIR":
            workdir = rest if rest.startswith("/") else f"{workdir.rstrip('/')}/{rest}"
        elif instr == "USER":
            user = rest
    return Image(env, entrypoint, cmd, workdir, user)


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]  # argv to run inside the container
    interval_s: float
    timeout_s: float
    retries: int
    start_period_s: float

    @property
    def budget_s(self) -> float:
        """How long the engine would wait before calling the service unhealthy."""
        return self.start_period_s + self.retries * max(self.interval_s, self.timeout_s)


@dataclass(frozen=True)
class Secret:
    name: str
    source: Path  # the file on the host (./secrets/<name> unless a stand-in directory is given)
    target: str  # where compose mounts it in the container


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    runner: Runner
    skip_reason: str
    entrypoint: tuple[str, ...]
    command: tuple[str, ...]
    environment: dict[str, str]  # image ENV, then compose's environment; container paths
    workdir: str
    volumes: tuple[tuple[str, str], ...]  # (named volume or host path, container path)
    secrets: tuple[Secret, ...]
    depends_on: dict[str, str]  # service -> condition
    healthcheck: Healthcheck | None
    profiles: tuple[str, ...]
    image_volumes: tuple[str, ...] = field(default=())
    ports: tuple[int, ...] = field(default=())  # container ports compose publishes

    def argv(self, args: Sequence[str] | None = None) -> list[str]:
        """What the container runs: the entrypoint, then `args` (as `run` passes them) or the
        command."""
        return [*self.entrypoint, *(self.command if args is None else args)]


def _healthcheck(block: Any, where: str) -> Healthcheck | None:
    if not block or block.get("disable"):
        return None
    test = block.get("test")
    if isinstance(test, str):
        argv: tuple[str, ...] = ("/bin/sh", "-c", test)
    elif isinstance(test, list) and test and test[0] == "CMD":
        argv = tuple(str(a) for a in test[1:])
    elif isinstance(test, list) and test and test[0] == "CMD-SHELL":
        argv = ("/bin/sh", "-c", " ".join(str(a) for a in test[1:]))
    else:
        raise TopologyError(f"{where}.test: {test!r} must be a string or start with CMD")
    d = {**HEALTH_DEFAULTS, **block}
    return Healthcheck(
        argv,
        duration_s(d["interval"], f"{where}.interval"),
        duration_s(d["timeout"], f"{where}.timeout"),
        int(d["retries"]),
        duration_s(d["start_period"], f"{where}.start_period"),
    )


@dataclass(frozen=True)
class Topology:
    root: Path
    services: dict[str, Service]  # in the compose file's order

    @classmethod
    def load(
        cls, root: Path, environ: Mapping[str, str], secrets_dir: Path | None = None
    ) -> Topology:
        """The merged compose model of `root`, interpolated from `environ` (the host's
        environment as `docker compose` would see it). `secrets_dir` stands in for the directory
        of the secret files (./secrets)."""
        files = [root / f for f in COMPOSE_FILES if (root / f).is_file()]
        if not files:
            raise TopologyError(f"{root}: no docker-compose.yml")
        models = [interpolate_tree(yaml.safe_load(f.read_text()), environ, f.name) for f in files]
        merged: dict[str, dict[str, Any]] = {}
        for f, model in zip(files, models, strict=True):
            for name, svc in (model.get("services") or {}).items():
                norm = _normalise(svc or {}, f"{f.name}: services.{name}")
                merged[name] = merge_service(merged.get(name, {}), norm)
        top_secrets: dict[str, Any] = {}
        for model in models:
            top_secrets.update(model.get("secrets") or {})
        images: dict[tuple[str, str], Image] = {}
        services: dict[str, Service] = {}
        for name, svc in merged.items():
            where = f"services.{name}"
            build = svc.get("build")
            image = str(svc.get("image", ""))
            env_from_image: dict[str, str] = {}
            entrypoint: tuple[str, ...] = ()
            cmd: tuple[str, ...] = ()
            workdir = "/"
            image_volumes: tuple[str, ...] = ()
            if build:
                build = {"context": build} if isinstance(build, str) else build
                dockerfile = (
                    root / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
                )
                key = (str(dockerfile), str(build.get("target", "")))
                if key not in images:
                    images[key] = parse_dockerfile(dockerfile, build.get("target"))
                img = images[key]
                runner: Runner = "project"
                skip = ""
                env_from_image, entrypoint, cmd, workdir = (
                    dict(img.env),
                    img.entrypoint,
                    img.cmd,
                    img.workdir,
                )
                image_volumes = _image_volumes(dockerfile)
            elif image.split(":")[0].rsplit("/", 1)[-1] == "redis":
                # The system redis-server stands in for the official image (same major version
                # line; its entrypoint and WORKDIR /data are emulated by the harness).
                runner, skip, workdir = "redis", "", "/data"
            else:
                runner = "skipped"
                skip = f"image {image} is not the project's and no container engine runs it here"
            if "entrypoint" in svc:
                # Compose: an entrypoint given for the service clears the image's CMD.
                entrypoint, cmd = tuple(svc["entrypoint"] or ()), ()
            if "command" in svc:
                cmd = tuple(str(a) for a in svc["command"] or ())
            env = dict(env_from_image)
            for k, v in (svc.get("environment") or {}).items():
                host = v if v is not None else environ.get(k)
                if host is not None:
                    env[k] = host
            services[name] = Service(
                name=name,
                image=image,
                runner=runner,
                skip_reason=skip,
                entrypoint=entrypoint,
                command=cmd,
                environment=env,
                workdir=str(svc.get("working_dir", workdir)),
                volumes=tuple(_volume(v, f"{where}.volumes") for v in svc.get("volumes") or ()),
                secrets=tuple(
                    _secret(s, top_secrets, root, secrets_dir, f"{where}.secrets")
                    for s in svc.get("secrets") or ()
                ),
                depends_on={
                    d: str((c or {}).get("condition", "service_started"))
                    for d, c in (svc.get("depends_on") or {}).items()
                },
                healthcheck=_healthcheck(svc.get("healthcheck"), f"{where}.healthcheck"),
                profiles=tuple(svc.get("profiles") or ()),
                image_volumes=image_volumes,
                ports=tuple(_port(p, f"{where}.ports") for p in svc.get("ports") or ()),
            )
        return cls(root, services)

    def start_order(self, names: Sequence[str]) -> list[str]:
        """`names` with every dependency first (compose's order: depends_on, then file order)."""
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in order:
                return
            if name in path:
                raise TopologyError(f"depends_on cycle: {' -> '.join((*path, name))}")
            if name not in self.services:
                raise TopologyError(f"services.{path[-1]}.depends_on: no service {name!r}")
            for dep in self.services[name].depends_on:
                visit(dep, (*path, name))
            order.append(name)

        for name in names:
            visit(name, ())
        return order

    def default_services(self) -> list[str]:
        """What `docker compose up` starts: every service without a profile."""
        return [n for n, s in self.services.items() if not s.profiles]


def _volume(v: Any, where: str) -> tuple[str, str]:
    if isinstance(v, dict):
        return str(v["source"]), str(v["target"])
    parts = str(v).split(":")
    if len(parts) < 2:
        raise TopologyError(f"{where}: {v!r} has no container path; write SOURCE:TARGET")
    return parts[0], parts[1]


def _port(p: Any, where: str) -> int:
    """The container port of a `ports` entry ("50051:50051", "127.0.0.1:80:8080", {target: 80})."""
    if isinstance(p, dict):
        return int(p["target"])
    text = str(p).split("/")[0].rsplit(":", 1)[-1]
    if not text.isdigit():
        raise TopologyError(f"{where}: {p!r} has no container port; write HOST:CONTAINER")
    return int(text)


def _secret(
    s: Any, top: Mapping[str, Any], root: Path, stand_in: Path | None, where: str
) -> Secret:
    name = str(s["source"] if isinstance(s, dict) else s)
    target = str(s.get("target", name)) if isinstance(s, dict) else name
    spec = top.get(name)
    if not isinstance(spec, dict) or "file" not in spec:
        raise TopologyError(f"{where}: secret {name!r} needs a top-level secrets.{name}.file")
    source = root / spec["file"]
    if stand_in is not None:
        source = stand_in / Path(spec["file"]).name
    return Secret(name, source, target if target.startswith("/") else f"/run/secrets/{target}")


def _image_volumes(dockerfile: Path) -> tuple[str, ...]:
    found = re.findall(r"^\s*VOLUME\s+(.+)$", dockerfile.read_text(), re.MULTILINE)
    out: list[str] = []
    for spec in found:
        out += json.loads(spec) if spec.strip().startswith("[") else spec.split()
    return tuple(out)
