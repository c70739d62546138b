"""What the load generator sends: the operation mix and deterministic episode content.

Every episode is a pure function of (seed, n), so the generator keeps no copy of what it wrote:
at the end it regenerates episode n and compares it with what the vault returns. Episodes are
noisy presentations of a fixed set of planted concept assemblies (the shape consolidation is meant
to find), with an embedding near their assembly's centroid so searches have real neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vault_pb
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as kcl_pb

# Operations drawn from the mix at the target rate. Triggers (sleep, prune, learn) run on their
# own timers instead: a consolidation cycle takes seconds, not a share of 200 calls per second.
OPS = ("put", "get", "search", "recall")
TRIGGERS = ("sleep", "prune", "learn")


class MixError(ValueError):
    """A --mix that cannot be used; the message names the fix."""


def parse_mix(text: str) -> dict[str, float]:
    """ "put=60,get=25,search=10,recall=5" -> normalised weights over OPS (missing ops weigh 0)."""
    weights = dict.fromkeys(OPS, 0.0)
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in weights:
            raise MixError(f"--mix: {item!r} is not op=weight with op one of {', '.join(OPS)}")
        try:
            w = float(value)
        except ValueError:
            raise MixError(f"--mix: weight of {name} must be a number, got {value!r}") from None
        if not math.isfinite(w) or w < 0:
            raise MixError(f"--mix: weight of {name} must be finite and >= 0, got {value!r}")
        weights[name] = w
    total = sum(weights.values())
    if total <= 0:
        raise MixError("--mix: at least one weight must be > 0, e.g. put=60,get=25,search=15")
    if weights["get"] > 0 and weights["put"] == 0:
        raise MixError("--mix: gets read episodes this run wrote, so put must be > 0 with get")
    return {k: v / total for k, v in weights.items()}


@dataclass(frozen=True)
class Workload:
    """Planted assemblies and the episodes, cues and traces drawn from them."""

    seed: int
    run_id: str
    embedding_dim: int
    n_concepts: int = 512
    n_assemblies: int = 32
    assembly_size: int = 12
    flip: float = 0.1  # share of an assembly's concepts swapped for random ones per episode

    @cached_property
    def assemblies(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0])
        out: np.ndarray = np.stack(
            [
                rng.choice(self.n_concepts, self.assembly_size, replace=False)
                for _ in range(self.n_assemblies)
            ]
        )
        return out

    @cached_property
    def centroids(self) -> np.ndarray:
        if self.embedding_dim == 0:
            return np.zeros((self.n_assemblies, 0), dtype=np.float32)
        rng = np.random.default_rng([self.seed, 1])
        c = rng.standard_normal((self.n_assemblies, self.embedding_dim)).astype(np.float32)
        unit: np.ndarray = c / np.linalg.norm(c, axis=1, keepdims=True)
        return unit

    @staticmethod
    def concept(j: int) -> str:
        return f"concept:lg{j:04d}"

    def episode_id(self, n: int) -> str:
        return f"lg-{self.run_id}-{n:010d}"

    def assembly_of(self, n: int) -> int:
        return n % self.n_assemblies

    def episode(self, n: int) -> vault_pb.Episode:
        """Episode n of this run, without a timestamp (the vault stamps it on arrival)."""
        rng = np.random.default_rng([self.seed, 2, n])
        a = self.assembly_of(n)
        members = self.assemblies[a].copy()
        k = max(1, round(self.flip * self.assembly_size))
        swap = rng.choice(self.assembly_size, k, replace=False)
        members[swap] = rng.choice(self.n_concepts, k, replace=False)
        concepts = list(dict.fromkeys(int(j) for j in members))  # a swap may repeat a member
        strengths = rng.uniform(0.6, 1.0, len(concepts))
        ep = vault_pb.Episode(
            id=self.episode_id(n),
            tags=["loadgen", f"assembly-{a}"],
            source=vault_pb.Source(type="loadgen", id=self.run_id),
            energy=float(rng.uniform(0.1, 1.0)),
            activation=vault_pb.ConceptActivation(
                concept_ids=[self.concept(j) for j in concepts],
                strengths=[float(s) for s in strengths],
            ),
            metadata={"run": self.run_id, "n": str(n)},
        )
        if self.embedding_dim:
            noise = rng.standard_normal(self.embedding_dim).astype(np.float32) * 0.05
            ep.embedding.extend((self.centroids[a] + noise).tolist())
        return ep

    def search_query(self, rng: np.random.Generator) -> list[float]:
        a = int(rng.integers(self.n_assemblies))
        noise = rng.standard_normal(self.embedding_dim).astype(np.float32) * 0.05
        return [float(x) for x in self.centroids[a] + noise]

    def recall_cue(self, rng: np.random.Generator) -> vault_pb.ConceptActivation:
        a = int(rng.integers(self.n_assemblies))
        members = self.assemblies[a][: max(2, self.assembly_size // 2)]
        return vault_pb.ConceptActivation(
            concept_ids=[self.concept(int(j)) for j in members],
            strengths=[1.0] * len(members),
        )

    def trace(self, rng: np.random.Generator, snapshots: int = 64) -> kcl_pb.ActivationTrace:
        """A few assemblies oscillating at their own frequencies: strengths 0.5 + 0.5 sin."""
        picked = rng.choice(self.n_assemblies, 3, replace=False)
        concepts = [int(j) for a in picked for j in self.assemblies[a][:4]]
        concepts = list(dict.fromkeys(concepts))
        freq = rng.uniform(0.05, 0.2, len(concepts))
        phase = rng.uniform(0, 2 * np.pi, len(concepts))
        t = np.arange(snapshots)[:, None]
        values = 0.5 + 0.5 * np.sin(2 * np.pi * freq * t + phase)
        ids = [self.concept(j) for j in concepts]
        return kcl_pb.ActivationTrace(
            snapshots=[
                kcl_pb.ConceptActivation(concept_ids=ids, strengths=[float(v) for v in row])
                for row in values
            ]
        )
