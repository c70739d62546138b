"""Drive the first run: each step through a public CLI, each result in one line.

Steps (each a CLI a user can type; the demo runs it as a process and reads its JSON):

1. ``vault-cli put-file``: the routine's episodes (mcp_services/demo/scenes.py), written to
   ``<var>/demo/<run>.jsonl`` first so they can be read afterwards;
2. ``python -m mcp_services.sleep_scheduler.trigger --once --tag demo-<run>``: one consolidation
   of this run's episodes (earlier data of the fleet is left to its own cycles);
3. the prune the pruner runs by itself after every consolidation (when
   ``sparse_pruner.trigger_on_consolidation`` is on), then ``python -m
   mcp_services.sparse_pruner.prune --once``;
4. ``vault-cli recall --concepts`` with partial cues: what completion added;
5. ``python -m mcp_services.koopman_learner.status --json --wait-seq <last seq stored>``.

Read-only look-ups that no CLI prints (a graph version's edge count, the pruner's latest job and
its settings) go through the same services' gRPC API with the fleet's client factory.

A run never collides with an earlier one: its episode ids and tag carry a fresh run id.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import ParseDict

from mcp_services.common.clients import ClientFactory
from mcp_services.demo import scenes
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc

VAULT_CLI = "mcp_services.episodic_vault.cli"
TRIGGER = "mcp_services.sleep_scheduler.trigger"
PRUNE = "mcp_services.sparse_pruner.prune"
LEARNER = "mcp_services.koopman_learner.status"
# What a person would type for each module.
SHOWN = {
    VAULT_CLI: ".venv/bin/vault-cli",
    TRIGGER: "python -m " + TRIGGER,
    PRUNE: "python -m " + PRUNE,
    LEARNER: "python -m " + LEARNER,
}
# The automatic prune starts on the consolidation event and takes about a second on the demo's
# graph; a busy two-core machine may need many times that.
AUTO_PRUNE_WAIT_S = 120.0
AUTOMATIC = "automatic prune after consolidation"
# A mode within this share of the routine's rate of a whole multiple of it counts as one.
HARMONIC_TOLERANCE = 0.05
BUSY_RETRIES = 60  # prune --once while another job runs: retry each second up to this many times
_TERMINAL = (
    pruner_pb2.JOB_STATE_SUCCEEDED,
    pruner_pb2.JOB_STATE_REFUSED,
    pruner_pb2.JOB_STATE_FAILED,
    pruner_pb2.JOB_STATE_CANCELLED,
)


class DemoFailed(Exception):
    """A step did not do what it must; the message says which and why."""


@dataclass
class Tools:
    """Runs the public CLIs as processes with the fleet's environment."""

    env: dict[str, str]
    api_key: str | None = None
    verbose: bool = False
    timeout_s: float = 600.0
    say: Callable[[str], None] = print

    def run(self, module: str, *args: str, ok: Sequence[int] = (0,)) -> tuple[int, str, str]:
        argv = [*args, *(["--api-key", self.api_key] if self.api_key else [])]
        if module == VAULT_CLI and self.api_key:  # vault-cli takes its options before the verb
            argv = ["--api-key", self.api_key, *args]
        if self.verbose:
            self.say(f"  $ {SHOWN[module]} {shlex.join(args)}")
        proc = subprocess.run(
            [sys.executable, "-m", module, *argv],
            env=self.env, capture_output=True, text=True, timeout=self.timeout_s,
        )  # fmt: skip
        if proc.returncode not in ok:
            why = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
            raise DemoFailed(
                f"`{SHOWN[module]} {shlex.join(args)}` exited {proc.returncode}: " + " | ".join(why)
            )
        return proc.returncode, proc.stdout, proc.stderr

    def json(self, module: str, *args: str) -> Any:
        _, out, _ = self.run(module, *args)
        return json.loads(out)


@dataclass
class Demo:
    tools: Tools
    clients: ClientFactory
    var_dir: Path
    dt_s: float
    run_id: str
    seed: int
    say: Callable[[str], None] = print
    committed: list[int] = field(default_factory=list)

    # -- 1. store ----------------------------------------------------------------------------

    def store(self) -> int:
        """Write the routine to a file, put it with vault-cli; returns the last seq stored."""
        dt_ms = round(self.dt_s * 1000)
        episodes = scenes.routine(self.run_id, dt_ms, self.seed)
        # The routine ended a moment ago: timestamps in the past, one learner step apart.
        start_ms = int(time.time() * 1000) - len(episodes) * dt_ms - 1000
        path = self.var_dir / "demo" / f"{self.run_id}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(ep.as_json(start_ms, self.run_id)) for ep in episodes]
        path.write_text("\n".join(lines) + "\n")
        out = self.tools.json(VAULT_CLI, "put-file", str(path))
        stored = int(out.get("created", 0)) + int(out.get("existing", 0))
        if stored != len(episodes):
            raise DemoFailed(f"vault-cli put-file stored {stored} of {len(episodes)} episodes")
        dropped = sum(len(scenes.SCENES[e.scene]) - _own(e) for e in episodes)
        strays = sum(len(e.strengths) - _own(e) for e in episodes)
        self.say(
            f"stored {len(episodes)} episodes: {len(scenes.SCENES)} scenes "
            f"({', '.join(scenes.SCENES)}) x {scenes.ROUNDS} noisy copies ({dropped} concepts "
            f"left out, {strays} strays), {self.dt_s:g} s apart; file {_shown_path(path)}"
        )
        return max(int(r["seq"]) for r in out["results"])

    # -- 2. consolidate ------------------------------------------------------------------------

    def consolidate(self) -> int:
        """One consolidation cycle of this run's episodes; returns the graph version it made."""
        job = self.tools.json(TRIGGER, "--once", "--tag", f"demo-{self.run_id}")
        version = int(job.get("graph_version", 0))
        if job.get("state") != "JOB_STATE_SUCCEEDED" or version == 0:
            raise DemoFailed(f"consolidation committed no graph: {job.get('error') or job}")
        with self.clients.channel("sleep_scheduler") as channel:
            stats = sleep_pb2_grpc.SleepSchedulerStub(channel).GetGraphStats(
                sleep_pb2.GetGraphStatsRequest(version=version), timeout=10
            )
        edges = int(stats.header.edge_count)
        self.say(
            f"consolidated {job.get('episodes_processed', 0)} episodes: graph v{version}, "
            f"{edges} edges, {job.get('prototypes', 0)} prototypes; energy of the scenes "
            f"{job.get('energy_before', 0.0):.3f} -> {job.get('energy_after', 0.0):.3f} "
            f"(lower: held more firmly), recall of held-out episodes "
            f"{job.get('stability_before', 0.0):.2f} -> {job.get('stability_after', 0.0):.2f}"
        )
        if edges == 0:
            notes = "; ".join(job.get("notes", [])) or "no note"
            raise DemoFailed(f"graph v{version} has no edges after consolidation ({notes})")
        return version

    # -- 3. prune --------------------------------------------------------------------------------

    def automatic_prune(self, version: int) -> None:
        """Report the prune the pruner starts after a consolidation, once it has finished."""
        with self.clients.channel("sparse_pruner") as channel:
            stub = pruner_pb2_grpc.SparsePrunerStub(channel)
            config = stub.GetConfig(pruner_pb2.GetConfigRequest(), timeout=10)
            if not config.trigger_on_consolidation:
                self.say(f"{AUTOMATIC}: off (sparse_pruner.trigger_on_consolidation)")
                return
            job = _finished_job_for(stub, version, AUTO_PRUNE_WAIT_S)
        if job is None:
            self.say(
                f"{AUTOMATIC}: no job on v{version} finished within {AUTO_PRUNE_WAIT_S:.0f} s; "
                "pruning on request instead"
            )
        else:
            self._report_prune(AUTOMATIC, job)

    def prune(self) -> None:
        """prune --once; retried while another pruning job runs."""
        for _ in range(BUSY_RETRIES):
            code, out, err = self.tools.run(PRUNE, "--once", ok=(0, 1, 3))
            if code == 1 and "RESOURCE_EXHAUSTED" in err:
                time.sleep(1.0)
                continue
            if code == 1:
                raise DemoFailed(f"prune --once failed: {err.strip() or out.strip()}")
            self._report_prune("prune --once", _job(json.loads(out)))
            return
        raise DemoFailed(f"prune --once: another pruning job kept running for {BUSY_RETRIES} s")

    def _report_prune(self, what: str, job: pruner_pb2.PruningJob) -> None:
        quality = f"recall of the stored scenes {job.quality_before:.2f} -> {job.quality_after:.2f}"
        if job.state == pruner_pb2.JOB_STATE_SUCCEEDED and job.committed_version:
            self.committed.append(int(job.committed_version))
            self.say(
                f"{what}: {job.edges_before} -> {job.edges_after} edges, committed "
                f"v{job.committed_version} ({quality})"
            )
        elif job.state == pruner_pb2.JOB_STATE_REFUSED:
            self.say(f"{what}: the quality guard refused it, nothing committed ({job.message})")
        else:
            state = pruner_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
            self.say(f"{what}: {state}, nothing committed ({job.message})")

    # -- 4. recall -------------------------------------------------------------------------------

    def recall(self, scene: str, cue: Sequence[str]) -> list[str]:
        """Recall with a partial cue of `scene`; returns the concepts completion added."""
        ids = [scenes.concept(c) for c in cue]
        out = self.tools.json(VAULT_CLI, "recall", "--concepts", ",".join(ids), "--k", "3")
        shown = "{" + ", ".join(cue) + "}"
        if out.get("completion") != "COMPLETION_APPLIED":
            raise DemoFailed(
                f"recall {shown}: completion {out.get('completion', '?')}: "
                f"{out.get('completion_detail', '')}"
            )
        effective = out.get("effective_cue", {}).get("concept_ids", [])
        added = [c for c in effective if c not in ids]
        if not added:
            raise DemoFailed(f"recall {shown}: completion added no concept to the cue")
        hits = out.get("hits", [])
        best = hits[0]["episode"] if hits else {}
        found = best.get("metadata", {}).get("scene", "?")
        self.say(
            f"recall {shown}: completion (graph v{out.get('graph_version', 0)}) added "
            f"{', '.join(scenes.short(c) for c in added)} (scene {scenes.scene_of(effective)}); "
            f"best episode {best.get('id', 'none')} ({found})"
        )
        if scenes.scene_of(effective) != scene:
            raise DemoFailed(f"recall {shown}: completion led to another scene than {scene}")
        return [scenes.short(c) for c in added]

    # -- 5. learner ------------------------------------------------------------------------------

    def learner(self, last_seq: int) -> None:
        """The learner's leading modes once it has read everything stored."""
        out = self.tools.json(LEARNER, "--json", "--modes", "3", "--wait-seq", str(last_seq))
        stats, modes = out["stats"], (out.get("modes") or {}).get("modes", [])
        if not modes:
            raise DemoFailed("the learner serves no mode")
        freqs = [abs(float(m.get("frequency_hz", 0.0))) for m in modes]
        period = scenes.routine_period_s(self.dt_s)
        base = 1 / period
        # A sequence that repeats every `period` has its modes at whole multiples of 1 / period.
        harmonics = sum(abs(f / base - round(f / base)) < HARMONIC_TOLERANCE for f in freqs)
        self.say(
            f"learner: {stats.get('mode_count', 0)} modes over {stats.get('concept_count', 0)} "
            f"concepts from {stats.get('snapshots_processed', 0)} snapshots; leading "
            f"{', '.join(f'{f:.2f}' for f in freqs)} Hz: {harmonics} of {len(freqs)} at "
            f"multiples of {base:.2f} Hz, the rate of the routine ({len(scenes.SCENES)} scenes "
            f"in {period:.2f} s)"
        )


def _shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies under it (var/demo/...)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _own(e: scenes.Episode) -> int:
    return sum(scenes.short(c) in scenes.SCENES[e.scene] for c in e.strengths)


def _finished_job_for(
    stub: pruner_pb2_grpc.SparsePrunerStub, version: int, within_s: float
) -> pruner_pb2.PruningJob | None:
    """The pruner's latest job once it has finished on `version` or later (None at the deadline)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            job: pruner_pb2.PruningJob = stub.GetPruningStatus(
                pruner_pb2.GetPruningStatusRequest(), timeout=10
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: no job has started yet
                raise
        else:
            if job.state in _TERMINAL and job.base_version >= version:
                return job
        time.sleep(0.2)
    return None


def _job(data: dict[str, Any]) -> pruner_pb2.PruningJob:
    return ParseDict(data, pruner_pb2.PruningJob(), ignore_unknown_fields=True)
