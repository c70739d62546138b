"""A real service whose config files a test edits, and the walks of its live and restart keys.

:func:`served` starts a service on free ports from a private copy of config/ (the test overlay)
with the file watch at 0.1 s, exactly as ``run()`` wires it, and hands back a :class:`Reloading`:
edit the overlay, read the service's metrics and its declared live settings.

:func:`walk_live` changes each declared live key of a section in turn and waits until the running
service shows the file's value; :func:`walk_restart` changes every other key of the section and
checks each is reported "restart needed" with its running and file value, and never applied.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel
from structlog.testing import capture_logs

from mcp_services.common import metric_names as names
from mcp_services.common.config import PROJECT_ROOT, config_files, load_config
from mcp_services.common.config_schema import Settings
from mcp_services.common.reload import ConfigReloader, Reloadable, flat_keys
from mcp_services.common.server import Context, ServerThread, Service
from tests.conftest import free_ports

# Environment variables naming each service's ports (config/base.yaml).
_PORT_VARS = {
    "episodic_vault": ("VAULT_GRPC_PORT", "VAULT_METRICS_PORT"),
    "sleep_scheduler": ("SLEEP_GRPC_PORT", "SLEEP_METRICS_PORT"),
    "sparse_pruner": ("PRUNER_GRPC_PORT", "PRUNER_METRICS_PORT"),
    "koopman_learner": ("KOOPMAN_GRPC_PORT", "KOOPMAN_METRICS_PORT"),
}


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so the watcher never reads a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for(cond: Callable[[], bool], within: float = 10.0) -> bool:
    """True once ``cond()`` holds, False if it still does not after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@dataclass
class Reloading:
    """A running service, the overlay file it watches, and what it reports."""

    server: ServerThread
    service: Any
    overlay: Path

    @property
    def reloader(self) -> ConfigReloader:
        assert self.server.running.reloader is not None
        return self.server.running.reloader

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.running.grpc_port}"

    def edit(self, section: str, values: Mapping[str, Any]) -> None:
        """Set ``values`` under ``section`` in the overlay (a nested section: "vault.postgres")."""
        tree = yaml.safe_load(self.overlay.read_text()) or {}
        node = tree
        for part in section.split("."):
            node = node.setdefault(part, {})
        node.update(values)
        write_atomically(self.overlay, yaml.safe_dump(tree))

    def reloads(self, outcome: str) -> float:
        """``tori_config_reloads_total{outcome}`` as the service's metrics endpoint reports it."""
        url = f"http://127.0.0.1:{self.server.running.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            page = resp.read().decode()
        m = re.search(rf'^{names.CONFIG_RELOADS}{{outcome="{outcome}"}} (\S+)$', page, re.M)
        assert m, f"{names.CONFIG_RELOADS}{{outcome={outcome!r}}} is not exported"
        return float(m.group(1))

    def running(self, key: str) -> object:
        """The value in force of a declared live key, read by the service's own declaration."""
        assert isinstance(self.service, Reloadable)
        return self.service.live_settings()[key]()


@contextmanager
def served(
    tmp_path: Path,
    name: str,
    endpoint_key: str,
    factory: Callable[[Context], Service],
    overlay: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterator[Reloading]:
    """Run ``factory``'s service with a watched private config; ``overlay`` seeds config/test.yaml."""
    config_dir = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config_dir)
    overlay_path = config_dir / "test.yaml"
    tree = yaml.safe_load(overlay_path.read_text()) or {}
    for section, values in (overlay or {}).items():
        tree.setdefault(section, {}).update(values)
    overlay_path.write_text(yaml.safe_dump(tree))
    grpc_var, metrics_var = _PORT_VARS[endpoint_key]
    grpc_port, metrics_port, *others = free_ports(2 + 2 * len(_PORT_VARS))
    env = {
        "TORI_VAR_DIR": str(tmp_path / "var"),
        "TORI_CONFIG_POLL_S": "0.1",
        grpc_var: str(grpc_port),
        metrics_var: str(metrics_port),
    }
    # The other services on ports nobody listens on: no call of this one reaches a stranger.
    spare = iter(others)
    for key, pair in _PORT_VARS.items():
        if key != endpoint_key:
            env.update({var: str(next(spare)) for var in pair})
    env.update(environ or {})

    def load() -> Settings:
        return load_config("test", config_dir, env)

    made: list[Service] = []

    def make(ctx: Context) -> Service:
        made.append(factory(ctx))
        return made[-1]

    srv = ServerThread(
        name, endpoint_key, make, load(), reload=(load, config_files("test", config_dir, env))
    ).start()
    try:
        yield Reloading(srv, made[0], overlay_path)
    finally:
        srv.stop()


def walk_live(
    svc: Reloading,
    section: str,
    steps: Sequence[Mapping[str, Any]],
    observe: Mapping[str, Callable[[], object]],
) -> None:
    """Edit each step's keys into the file and wait until the service runs with them.

    ``steps`` must change every key the service declares live (a newly declared key without a
    step fails here, so a declaration is never untested). A key is observed through
    ``observe[key]`` (an RPC, a behaviour) when given, else through the service's declaration.
    """
    declared = {k.removeprefix(section + ".") for k in svc.reloader.live_keys}
    stepped = {key for step in steps for key in step}
    assert stepped == declared, (
        f"live keys without a step: {sorted(declared - stepped)}; "
        f"steps for keys not declared live: {sorted(stepped - declared)}"
    )
    for step in steps:
        applied = svc.reloads("applied")
        for key, value in step.items():
            assert svc.running(f"{section}.{key}") != value, f"{key}: pick a value it does not run"
        svc.edit(section, step)
        for key, value in step.items():
            read = observe.get(key) or _declared(svc, f"{section}.{key}")
            assert wait_for(_equals(read, value)), (
                f"{section}.{key}: the file says {value!r}, the running service {read()!r}"
            )
        assert wait_for(_counted(svc, "applied", applied)), (
            f"{step}: tori_config_reloads_total{{outcome='applied'}} did not count the reload"
        )
        assert svc.reloads("applied") == applied + 1, f"{step}: counted more than one reload"
        flat = flat_keys(svc.reloader.settings)
        assert {k: flat[f"{section}.{k}"] for k in step} == dict(step)


def _declared(svc: Reloading, key: str) -> Callable[[], object]:
    return lambda: svc.running(key)


def _equals(read: Callable[[], object], value: object) -> Callable[[], bool]:
    return lambda: read() == value


def _counted(svc: Reloading, outcome: str, before: float) -> Callable[[], bool]:
    return lambda: svc.reloads(outcome) > before


def other_value(model: type[BaseModel], name: str, current: Any, scratch: Path) -> Any:
    """A valid value for ``model.name`` other than ``current`` (by the field's type)."""
    annotation = model.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        new: Any = next(v for v in get_args(annotation) if v != current)
    elif isinstance(current, bool):
        new = not current
    elif isinstance(current, int):
        new = current + 1
    elif isinstance(current, float):
        new = current * 2 if current > 0 else 1.0
    elif isinstance(current, str):
        new = "127.0.0.1:9" if name.endswith("target") else str(scratch / name)
    else:
        raise AssertionError(f"{model.__name__}.{name}: teach other_value about {current!r}")
    return new


def walk_restart(svc: Reloading, section: str, scratch: Path) -> list[str]:
    """Change each key of ``section`` the service does not declare live, one reload each.

    Every one must be logged "restart needed" with the running and the file value, counted
    restart_needed, and leave the running configuration and the applied count as they were.
    Returns the keys walked.
    """
    declared = svc.reloader.live_keys
    model = type(getattr(svc.reloader.settings, section))
    start = getattr(svc.reloader.settings, section)
    keys = [k for k in model.model_fields if f"{section}.{k}" not in declared]
    applied = svc.reloads("applied")
    edited = start.model_dump()
    for key in keys:
        current = getattr(start, key)
        new = edited[key] = other_value(model, key, current, scratch)
        model.model_validate(edited)  # a value other_value gets wrong fails here, by name
        held = svc.reloads("restart_needed")
        with capture_logs() as logs:
            svc.edit(section, {key: new})
            assert wait_for(_counted(svc, "restart_needed", held)), (
                f"{section}.{key}: no reload counted restart_needed"
            )
        warned = [
            e
            for e in logs
            if e["event"] == "config_change_needs_restart" and e["key"] == f"{section}.{key}"
        ]
        assert warned, f"{section}.{key}: no config_change_needs_restart line in {logs}"
        assert (warned[0]["running"], warned[0]["file"]) == (current, new)
        assert warned[0]["log_level"] == "warning"
        # (config_changed is info, below the suite's log level: the applied count checks it.)
        errors = ("config_reload_refused", "config_change_not_applied")
        assert not [e for e in logs if e["event"] in errors], logs
        assert getattr(getattr(svc.reloader.settings, section), key) == current
    assert svc.reloads("applied") == applied, "a key that needs a restart was counted applied"
    return keys


def readme_reload_row(service: str) -> tuple[set[str], set[str]]:
    """The keys README.md's "Config reload" table lists for ``service``: (live, restart)."""
    text = (PROJECT_ROOT / "README.md").read_text()
    table = text.partition("| service | keys live on reload | keys that need a restart |")[2]
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        if line.startswith(f"| {service} |"):
            _, _, live, restart, _ = line.split("|")
            keys = re.compile(r"`([a-z0-9_]+)`")
            return set(keys.findall(live)), set(keys.findall(restart))
    raise AssertionError(f"README.md's Config reload table has no row for {service}")


def check_readme(svc: Reloading, section: str, service: str) -> None:
    """The README row of ``service`` names exactly its live keys and the rest of ``section``."""
    live, restart = readme_reload_row(service)
    declared = {k.removeprefix(section + ".") for k in svc.reloader.live_keys}
    assert live == declared, f"README lists {sorted(live)}, {service} declares {sorted(declared)}"
    model = type(getattr(svc.reloader.settings, section))
    assert restart == set(model.model_fields) - declared
