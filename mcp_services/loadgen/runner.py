"""The load run: operations at a target rate, triggers on timers, progress, and the final check.

Pacing is open-loop: operation i is due at start + i / rate, whatever earlier calls took, so a
slow fleet shows as latency and lateness rather than as a quietly lower rate. At most
`max_in_flight` calls are outstanding (memory and sockets stay bounded); a dispatch that has to
wait for a free slot is counted as late. Triggers (sleep, prune, learn) each run one call at a
time on their own timer.

At the end every acknowledged put is read back and compared with its regenerated content: an
episode the vault acknowledged and then cannot return is *lost*; one it returns changed is
*mismatched*. Neither may happen. A vault configured to evict (tier `max_items`) may delete
episodes by its own pruning: retention.py says which missing episodes count as *evicted* and
which as lost, both for the gets of the run and for the final check.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import load_config
from mcp_services.episodic_vault.rpc.codec import client_content
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vault_pb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc as vault_grpc
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as kcl_pb
from mcp_services.gen.tori.koopman.v1 import koopman_pb2_grpc as kcl_grpc
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.loadgen.retention import Retention, RetentionCheck, scrape_pruned
from mcp_services.loadgen.stats import OpStats
from mcp_services.loadgen.workload import OPS, TRIGGERS, Workload

# A trigger refused because the service is busy or has nothing to work on yet (a cycle already
# running, no graph to prune yet): the request was understood and answered, so not an error.
REFUSALS = {"ALREADY_EXISTS", "ABORTED", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"}


@dataclass(frozen=True)
class Targets:
    vault: str
    scheduler: str
    pruner: str
    learner: str


@dataclass(frozen=True)
class LoadConfig:
    rate: float
    duration_s: float
    mix: dict[str, float]
    workload: Workload
    sleep_every_s: float = 0.0
    prune_every_s: float = 0.0
    learn_every_s: float = 0.0
    max_in_flight: int = 64
    timeout_s: float = 10.0
    trigger_timeout_s: float = 300.0
    progress_every_s: float = 10.0
    verify: bool = True
    verify_concurrency: int = 32
    api_key: str = ""
    stop_file: Path | None = None
    # What the vault may evict (retention.py) and where its metrics are (the pruned count).
    retention: Retention = "all"
    vault_metrics: str = ""


class UnsupportedOperation(Exception):
    """A requested operation has no RPC in this build; the message says which flag to change."""


def check_supported(cfg: LoadConfig) -> None:
    """Refuse up front what the services cannot do, rather than fail every call of it."""
    if cfg.mix.get("search", 0) > 0 and cfg.workload.embedding_dim == 0:
        raise UnsupportedOperation(
            "--mix: search needs embeddings, but --embedding-dim is 0; drop search or set it"
        )
    if cfg.retention != "all" and cfg.verify and not cfg.vault_metrics:
        raise UnsupportedOperation(
            f"--retention {cfg.retention}: the check needs the vault's pruned count; give "
            "--vault-metrics host:port (or --retention all against a vault that never evicts)"
        )


@dataclass
class Acks:
    """Which episode numbers the vault acknowledged: one byte each (17 MB for a 24 h soak)."""

    flags: bytearray = field(default_factory=bytearray)
    count: int = 0

    def set(self, n: int) -> None:
        if n >= len(self.flags):
            self.flags.extend(bytes(max(n + 1 - len(self.flags), 4096)))
        if not self.flags[n]:
            self.flags[n] = 1
            self.count += 1

    def __contains__(self, n: int) -> bool:
        return n < len(self.flags) and bool(self.flags[n])

    def numbers(self) -> list[int]:
        return np.flatnonzero(np.frombuffer(bytes(self.flags), dtype=np.uint8)).tolist()


def _code(exc: grpc.aio.AioRpcError) -> str:
    return str(exc.code().name)


class LoadRun:
    def __init__(
        self,
        cfg: LoadConfig,
        targets: Targets,
        out: TextIO = sys.stderr,
        clients: ClientFactory | None = None,
    ) -> None:
        self.cfg = cfg
        self.targets = targets
        # Channels come from the fleet's client factory (the configured one when not given).
        self.clients = clients
        self.out = out
        self.wl = cfg.workload
        self.stats = {name: OpStats() for name in (*OPS, *TRIGGERS)}
        self.acks = Acks()
        self.next_n = 0
        self.late = 0
        self.stopped_by = "duration"
        self.rng = np.random.default_rng([self.wl.seed, 3])
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {cfg.api_key}"),) if cfg.api_key else ()
        )
        self.verify_result: dict[str, Any] = {}
        self.retention = RetentionCheck(cfg.retention, None, self.metadata, cfg.timeout_s)

    # --- calls ---------------------------------------------------------------------------
    async def _timed(self, op: str, call: Callable[[], Awaitable[Any]], tolerate: str = "") -> Any:
        """The call's result; None after an error (counted); `tolerate` when it failed with that
        code (not counted: the caller decides)."""
        start = time.perf_counter()
        try:
            result = await call()
        except grpc.aio.AioRpcError as exc:
            code = _code(exc)
            if code == tolerate:
                return tolerate
            if op in TRIGGERS and code in REFUSALS:
                self.stats[op].busy += 1
                self.stats[op].refusals[code] = str(exc.details() or "")[:200]
            else:
                self.stats[op].record(time.perf_counter() - start, code)
            return None
        self.stats[op].record(time.perf_counter() - start, None)
        return result

    async def put(self) -> None:
        n = self.next_n
        self.next_n += 1
        req = vault_pb.PutEpisodeRequest(episode=self.wl.episode(n))
        t = self.cfg.timeout_s
        self.retention.times.sent(n)
        resp = await self._timed(
            "put", lambda: self.vault.PutEpisode(req, timeout=t, metadata=self.metadata)
        )
        if resp is not None:
            self.acks.set(n)

    async def get(self) -> None:
        if self.acks.count == 0:
            return await self.put()
        n = int(self.rng.integers(self.next_n))
        while n not in self.acks:  # nearly every put is acknowledged: this ends fast
            n = int(self.rng.integers(self.next_n))
        req = vault_pb.GetEpisodeRequest(id=self.wl.episode_id(n))
        t = self.cfg.timeout_s
        start = time.perf_counter()
        resp = await self._timed(
            "get",
            lambda: self.vault.GetEpisode(req, timeout=t, metadata=self.metadata),
            tolerate="NOT_FOUND",
        )
        if resp == "NOT_FOUND":
            await self._missing("get", n, time.perf_counter() - start)

    async def _missing(self, op: str, n: int, seconds: float) -> None:
        """An acknowledged episode found missing: evicted by the vault's own pruning, or lost
        (counted as a NOT_FOUND error; also when the scheduler cannot tell which)."""
        try:
            evicted = await self.retention.may_be_evicted(n)
        except grpc.aio.AioRpcError:
            evicted = False
        if evicted:
            self.stats[op].evicted += 1
        else:
            self.stats[op].record(seconds, "NOT_FOUND")

    async def search(self) -> None:
        req = vault_pb.SearchRequest(
            embedding=self.wl.search_query(self.rng), k=10, omit_bodies=True
        )
        t = self.cfg.timeout_s
        await self._timed(
            "search", lambda: self.vault.Search(req, timeout=t, metadata=self.metadata)
        )

    async def recall(self) -> None:
        req = vault_pb.RecallRequest(cue=self.wl.recall_cue(self.rng), k=10, omit_bodies=True)
        t = self.cfg.timeout_s
        await self._timed(
            "recall", lambda: self.vault.Recall(req, timeout=t, metadata=self.metadata)
        )

    async def sleep(self) -> None:
        req = sleep_pb2.StartConsolidationRequest(wait=True, trigger="loadgen")
        t = self.cfg.trigger_timeout_s
        md = self.metadata
        job = await self._timed(
            "sleep", lambda: self.scheduler.StartConsolidation(req, timeout=t, metadata=md)
        )
        self._job_outcome("sleep", job, sleep_pb2.JobState.Name)

    async def prune(self) -> None:
        req = pruner_pb2.TriggerPruningRequest(reason="loadgen")
        t = self.cfg.trigger_timeout_s
        md = self.metadata
        job = await self._timed(
            "prune", lambda: self.pruner.TriggerPruning(req, timeout=t, metadata=md)
        )
        self._job_outcome("prune", job, pruner_pb2.JobState.Name)

    def _job_outcome(self, op: str, job: Any, state_name: Callable[[Any], str]) -> None:
        """A trigger call that returned a job: a FAILED job is an error of the run; one the
        service refused by its own rules (the pruner's quality guard) is a refusal."""
        if job is None:
            return
        state = state_name(job.state).removeprefix("JOB_STATE_")
        self.stats[op].outcomes[state] += 1
        if state == "FAILED":
            self.stats[op].ok -= 1
            self.stats[op].errors["JOB_FAILED"] += 1

    async def learn(self) -> None:
        req = kcl_pb.ProcessActivationBatchRequest(traces=[self.wl.trace(self.rng)])
        t = self.cfg.trigger_timeout_s
        await self._timed(
            "learn",
            lambda: self.learner.ProcessActivationBatch(req, timeout=t, metadata=self.metadata),
        )

    # --- loops ---------------------------------------------------------------------------
    async def _dispatch(self, stop: asyncio.Event) -> None:
        ops = [op for op in OPS if self.cfg.mix.get(op, 0) > 0]
        weights = np.array([self.cfg.mix[op] for op in ops])
        handlers = {op: getattr(self, op) for op in ops}
        slots = asyncio.Semaphore(self.cfg.max_in_flight)
        running: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        i = 0
        while not stop.is_set():
            due = start + i / self.cfg.rate
            if due - start >= self.cfg.duration_s:
                break
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            if slots.locked():
                self.late += 1
            await slots.acquire()
            op = ops[int(self.rng.choice(len(ops), p=weights))]

            async def one(handler: Callable[[], Awaitable[None]] = handlers[op]) -> None:
                try:
                    await handler()
                finally:
                    slots.release()

            task = asyncio.create_task(one())
            running.add(task)
            task.add_done_callback(running.discard)
            i += 1
        if running:
            await asyncio.wait(running, timeout=self.cfg.timeout_s + 5)

    async def _trigger_loop(self, name: str, every_s: float, stop: asyncio.Event) -> None:
        handler: Callable[[], Awaitable[None]] = getattr(self, name)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set():
                return
            await handler()

    async def _watch_stop_file(self, stop: asyncio.Event) -> None:
        path = self.cfg.stop_file
        while path is not None and not stop.is_set():
            if path.exists():
                self.stopped_by = "stop-file"
                stop.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _progress(self, stop: asyncio.Event, start: float) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.progress_every_s)
            if not stop.is_set():  # the run prints the final line itself
                self.print_progress(time.monotonic() - start)

    def print_progress(self, elapsed: float) -> None:
        ops = sum(self.stats[op].total for op in OPS)
        errors = sum(sum(s.errors.values()) for s in self.stats.values())
        put = self.stats["put"].window
        triggers = " ".join(f"{t} {self.stats[t].ok}" for t in TRIGGERS)
        print(
            f"[{elapsed:7.0f}s] {ops} ops ({ops / max(elapsed, 1e-9):.1f}/s) errors {errors} "
            f"late {self.late} | put p50 {put.percentile(50) * 1e3:.1f} ms "
            f"p99 {put.percentile(99) * 1e3:.1f} ms | acked {self.acks.count} | {triggers}",
            file=self.out,
            flush=True,
        )
        for s in self.stats.values():
            s.window.reset()

    # --- verification --------------------------------------------------------------------
    async def verify(self, interrupt: asyncio.Event) -> dict[str, Any]:
        numbers = self.acks.numbers()
        lost: list[str] = []
        mismatched: list[str] = []
        errors: dict[str, int] = {}
        checked = evicted = 0
        slots = asyncio.Semaphore(self.cfg.verify_concurrency)

        async def check(n: int) -> None:
            nonlocal checked, evicted
            async with slots:
                if interrupt.is_set():
                    return
                want = self.wl.episode(n)
                for attempt in range(3):
                    try:
                        resp = await self.vault.GetEpisode(
                            vault_pb.GetEpisodeRequest(id=want.id),
                            timeout=self.cfg.timeout_s,
                            metadata=self.metadata,
                        )
                    except grpc.aio.AioRpcError as exc:
                        code = _code(exc)
                        if code == "NOT_FOUND":
                            try:
                                gone = await self.retention.may_be_evicted(n)
                            except grpc.aio.AioRpcError:
                                gone = False  # the scheduler cannot vouch for an eviction
                            if gone:
                                evicted += 1
                            else:
                                lost.append(want.id)
                        elif code == "UNAVAILABLE" and attempt < 2:
                            await asyncio.sleep(0.2 * (attempt + 1))
                            continue
                        else:
                            errors[code] = errors.get(code, 0) + 1
                        break
                    got = client_content(resp.episode)
                    got.ClearField("timestamp")
                    if got != want:
                        mismatched.append(want.id)
                    break
                checked += 1

        await asyncio.gather(*(check(n) for n in numbers))
        books = await self._books(evicted, errors)
        return {
            "acknowledged": len(numbers),
            "checked": checked,
            "lost": len(lost) + books.get("unaccounted", 0),
            "lost_protected": len(lost),
            "mismatched": len(mismatched),
            "evicted": evicted,
            **books,
            "errors": errors,
            "interrupted": interrupt.is_set(),
            "examples": (lost + mismatched)[:10],
        }

    async def _books(self, evicted: int, errors: dict[str, int]) -> dict[str, Any]:
        """Missing episodes counted as evicted against the vault's own pruned count: more
        evicted than the vault says it pruned are lost ("unaccounted")."""
        if self.cfg.retention == "all":
            return {}
        try:
            pruned = await asyncio.to_thread(scrape_pruned, self.cfg.vault_metrics)
        except (OSError, ValueError) as exc:
            errors["VAULT_METRICS"] = errors.get("VAULT_METRICS", 0) + 1
            return {"vault_pruned": None, "unaccounted": evicted, "books_error": str(exc)[:200]}
        return {"vault_pruned": pruned, "unaccounted": max(0, evicted - pruned)}

    # --- the run -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, interrupt: asyncio.Event) -> dict[str, Any]:
        """Run until the duration ends or `stop` is set; then verify unless `interrupt` is."""
        t = self.targets
        clients = self.clients or ClientFactory.of(load_config(), self.cfg.api_key or None)
        # Retries off: a load generator counts every failure instead of hiding it.
        async with (
            clients.aio_channel(target=t.vault, retries=False) as vch,
            clients.aio_channel(target=t.scheduler, retries=False) as sch,
            clients.aio_channel(target=t.pruner, retries=False) as pch,
            clients.aio_channel(target=t.learner, retries=False) as lch,
        ):
            self.vault = vault_grpc.EpisodicVaultStub(vch)
            self.scheduler = sleep_pb2_grpc.SleepSchedulerStub(sch)
            self.pruner = pruner_pb2_grpc.SparsePrunerStub(pch)
            self.learner = kcl_grpc.KoopmanLearnerStub(lch)
            self.retention.scheduler = self.scheduler
            start = time.monotonic()
            load_done = asyncio.Event()
            background = [
                asyncio.create_task(self._watch_stop_file(load_done)),
                asyncio.create_task(self._progress(load_done, start)),
            ]
            for name, every in (
                ("sleep", self.cfg.sleep_every_s),
                ("prune", self.cfg.prune_every_s),
                ("learn", self.cfg.learn_every_s),
            ):
                if every > 0:
                    background.append(
                        asyncio.create_task(self._trigger_loop(name, every, load_done))
                    )
            relay = asyncio.create_task(self._relay(stop, load_done))
            await self._dispatch(load_done)
            load_done.set()
            relay.cancel()
            # A trigger still waiting on a long cycle is cancelled (the server finishes the job).
            for task in background:
                task.cancel()
            await asyncio.gather(*background, relay, return_exceptions=True)
            elapsed = time.monotonic() - start
            self.print_progress(elapsed)
            if self.cfg.verify and not interrupt.is_set():
                print(f"verifying {self.acks.count} acknowledged episodes ...", file=self.out)
                self.verify_result = await self.verify(interrupt)
        if self.cfg.stop_file is not None:
            self.cfg.stop_file.unlink(missing_ok=True)
        return self.summary(elapsed)

    async def _relay(self, stop: asyncio.Event, load_done: asyncio.Event) -> None:
        await stop.wait()
        if self.stopped_by == "duration":
            self.stopped_by = "signal"
        load_done.set()

    def summary(self, elapsed: float) -> dict[str, Any]:
        ops_total = sum(self.stats[op].total for op in OPS)
        errors = sum(sum(s.errors.values()) for s in self.stats.values())
        v = self.verify_result
        clean = not v or not (v["lost"] or v["mismatched"] or v["errors"] or v["interrupted"])
        ok = errors == 0 and clean
        return {
            "run_id": self.wl.run_id,
            "targets": self.targets.__dict__,
            "rate_target": self.cfg.rate,
            "rate_achieved": round(ops_total / max(elapsed, 1e-9), 2),
            "duration_s": round(elapsed, 2),
            "stopped_by": self.stopped_by,
            "operations": ops_total,
            "late": self.late,
            "errors": errors,
            "puts_acknowledged": self.acks.count,
            "retention": self.cfg.retention,
            "ops": {op: self.stats[op].summary() for op in OPS if self.cfg.mix.get(op, 0) > 0},
            "triggers": {t: self.stats[t].summary() for t in TRIGGERS if self.stats[t].total},
            "verify": v or None,
            "ok": ok and bool(v or not self.cfg.verify),
        }
