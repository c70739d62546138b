"""The network of the compose-shaped harness: namespaces on a bridge, names, mounted secrets.

A bridge lives in a namespace of its own, so nothing is added to the host's network; each
container namespace gets `lo` and an `eth0` whose veth peer is a port of that bridge, with an
address of SUBNET that exists only inside these namespaces. `ip netns exec` bind-mounts
``/etc/netns/<ns>/hosts`` over /etc/hosts, which maps every compose service name to its address.

A process enters its namespace through :func:`in_namespace`: ``setpriv --pdeathsig KILL`` (it
dies with the test process), ``ip netns exec``, ``unshare --mount`` and a shell step that mounts
a fresh tmpfs on /run and bind-mounts each secret file read-only where compose mounts it
(/run/secrets/<name>). The mounts are real, in that process's private mount namespace; the
host's /run is never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.compose_net.topology import Secret

SUBNET = "10.89.0"  # a /24 that exists only inside the test's namespaces
ETC_NETNS = Path("/etc/netns")
NS_RE = re.compile(r"^tori(\d+)r\d+-")  # names made by ComposeNet: tori<pid>r<run>-<label>


class HarnessError(Exception):
    """The network or a container could not be set up or did not come up."""


def namespace_support() -> str | None:
    """None when this process can build the network, else why it cannot (the skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the suite as root"
    for tool in ("ip", "unshare", "nsenter", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (util-linux / iproute2)"
    probe = f"tori{os.getpid()}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise HarnessError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def reap_stale_namespaces() -> list[str]:
    """Delete the namespaces (and /etc/netns dirs) of earlier runs whose process is gone (a
    SIGKILLed test run cannot clean up after itself)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    gone = []
    for name in (line.split()[0] for line in listed.splitlines() if line.strip()):
        m = NS_RE.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
            gone.append(name)
    with contextlib.suppress(OSError):
        ETC_NETNS.rmdir()  # only when empty
    return gone


class Network:
    """A bridge in its own namespace and the namespaces attached to it."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.bridge_ns = f"{prefix}net"
        self.namespaces: list[str] = []
        self._next_host = 2
        ip("netns", "add", self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def attach(self, label: str) -> tuple[str, str]:
        """A new namespace on the bridge: (its name, its address)."""
        host = self._next_host
        if host > 254:
            raise HarnessError(f"{SUBNET}.0/24 is full")
        self._next_host += 1
        ns, address = f"{self.prefix}{label}", f"{SUBNET}.{host}"
        veth = f"v{host}"  # interface names live in the bridge's namespace: short and unique
        self.namespaces.append(ns)  # before it exists, so a failure below still removes it
        ip("netns", "add", ns)
        ip("-n", self.bridge_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
           "netns", ns)  # fmt: skip
        ip("-n", self.bridge_ns, "link", "set", veth, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return ns, address

    def write_hosts(self, ns: str, names: Mapping[str, str]) -> None:
        """/etc/hosts as processes of `ns` see it: localhost and each name -> address."""
        d = ETC_NETNS / ns
        d.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{addr}\t{name}" for name, addr in names.items()]
        (d / "hosts").write_text("\n".join(lines) + "\n")

    def detach(self, ns: str) -> None:
        """Delete `ns` (its veth pair goes with it) and its /etc/netns dir."""
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
        if ns in self.namespaces:
            self.namespaces.remove(ns)

    def close(self) -> None:
        for ns in [*self.namespaces, self.bridge_ns]:
            self.detach(ns)
        with contextlib.suppress(OSError):
            ETC_NETNS.rmdir()  # only when empty: other runs' and users' dirs stay


def in_namespace(ns: str, secrets: Sequence[Secret], argv: Sequence[str], name: str) -> list[str]:
    """The command that runs `argv` in `ns` with `secrets` mounted read-only at their targets."""
    steps = ["mount -t tmpfs -o mode=0755,size=1m tori-run /run", "mkdir -p /run/secrets"]
    for s in secrets:
        if not s.source.is_file():
            raise HarnessError(f"secret {s.name}: {s.source} does not exist")
        t = shlex.quote(s.target)
        steps += [
            f"mkdir -p {shlex.quote(str(Path(s.target).parent))}",
            f"touch {t}",
            f"mount --bind {shlex.quote(str(s.source))} {t}",
            f"mount -o remount,bind,ro {t}",
        ]
    script = "set -e; " + "; ".join(steps) + '; exec "$@"'
    # Every step execs the next, so the process the test holds is the service itself.
    return [
        "setpriv", "--pdeathsig", "KILL", "--",
        "ip", "netns", "exec", ns,
        "unshare", "--mount", "--propagation", "private", "--",
        "/bin/sh", "-c", script, name, *argv,
    ]  # fmt: skip


def enter(pid: int, workdir: Path, argv: Sequence[str]) -> list[str]:
    """The command that runs `argv` inside the network and mount namespaces of process `pid`
    (what `docker exec` does): its /etc/hosts, its /run/secrets."""
    return ["nsenter", f"--target={pid}", "--mount", "--net", f"--wd={workdir}", "--", *argv]
