"""The demo's built-in memories: named scenes (concepts that occur together) as noisy episodes.

A scene is a set of concepts that belong together ("kitchen": kettle, cup, tea, ...). The demo
lives through a routine that visits every scene in a fixed order, round after round, one episode
per learner time step (``dt``). Each episode is a noisy copy of its scene: a concept may be left
out (``DROP``), a stray concept of another scene may intrude (``STRAY``), and strengths vary.
What the memory should do with them: consolidation turns each scene into an attractor of the
concept graph (edges between concepts that co-occur), completion fills a partial cue in from it,
and the learner sees the routine's rhythm (period: scenes x dt).

Plain Python: episodes come out as protobuf-JSON dicts, one a line for ``vault-cli put-file``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

PREFIX = "concept:"

# Concept names are distinct across scenes, so each scene is its own assembly.
SCENES: dict[str, tuple[str, ...]] = {
    "kitchen": ("kettle", "cup", "tea", "sugar", "spoon", "sink"),
    "park": ("dog", "ball", "grass", "tree", "bench", "leash"),
    "office": ("desk", "laptop", "email", "meeting", "printer"),
    "beach": ("sand", "wave", "sun", "towel", "shell", "gull", "sunscreen"),
    "library": ("book", "shelf", "lamp", "reader", "page"),
    "garage": ("car", "wrench", "tire", "oil", "jack", "toolbox"),
    "concert": ("stage", "guitar", "drum", "crowd", "song", "ticket"),
    "garden": ("rose", "soil", "hose", "seed", "bee"),
}
# Partial cues the demo recalls: two concepts of a scene; completion should bring the rest.
CUES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kitchen", ("kettle", "cup")),
    ("park", ("dog", "ball")),
)
# 8 rounds of 8 scenes: 64 episodes, the snapshots the learner gathers from one source before it
# fits them as one trace (koopman_learner.domain.traces.STREAM_FLUSH_SNAPSHOTS), and 8 copies a
# scene, well above the 3 confirming episodes the scheduler needs to form a prototype.
ROUNDS = 8
DROP = 0.15  # chance that a concept of the scene is left out of an episode
# A concept is left out of at most this many copies of its scene, so every scene stays one
# memory. Left out independently, a concept now and then misses half the copies by chance, and
# consolidation may then keep two variants of the scene apart as two prototypes, between which a
# two-concept cue is a tie that completion does not break (the scheduler's merge on 200 seeds of
# this routine: 16 formed more than 8 prototypes; with this cap, none).
MAX_LEFT_OUT = 1
STRAY = 0.25  # chance that a concept of another scene intrudes
MIN_CONCEPTS = 3  # an episode keeps at least this many of its scene's concepts
STRENGTH = (0.7, 1.0)  # uniform; > 0.5 counts as active


def concept(name: str) -> str:
    return PREFIX + name


def short(concept_id: str) -> str:
    return concept_id.removeprefix(PREFIX)


@dataclass(frozen=True)
class Episode:
    """One noisy moment of a scene, at `offset_ms` after the routine's start."""

    episode_id: str
    scene: str
    offset_ms: int
    strengths: dict[str, float]

    def as_json(self, start_ms: int, run_id: str) -> dict[str, object]:
        """The episode in protobuf-JSON form (what `vault-cli put-file` reads, one a line)."""
        return {
            "id": self.episode_id,
            "timestamp": _rfc3339(start_ms + self.offset_ms),
            "tags": ["demo", f"demo-{run_id}", f"scene:{self.scene}"],
            # One source per run: the learner strings its episodes into one time series.
            "source": {"type": "demo", "id": run_id},
            "activation": {
                "conceptIds": list(self.strengths),
                "strengths": list(self.strengths.values()),
            },
            "metadata": {"scene": self.scene},
        }


def routine(run_id: str, dt_ms: int, seed: int, rounds: int = ROUNDS) -> list[Episode]:
    """`rounds` passes through every scene in order, one noisy episode every `dt_ms`."""
    rng = random.Random(seed)
    names = list(SCENES)
    left_out: dict[str, dict[str, int]] = {name: {} for name in names}
    episodes = []
    for r in range(rounds):
        for s, name in enumerate(names):
            i = r * len(names) + s
            strengths = noisy_copy(name, rng, left_out[name])
            episodes.append(Episode(f"demo-{run_id}-{i:03d}", name, i * dt_ms, strengths))
    return episodes


def noisy_copy(name: str, rng: random.Random, left_out: dict[str, int]) -> dict[str, float]:
    """One episode of scene `name`: some concepts left out (each at most MAX_LEFT_OUT times over
    the copies that share `left_out`, which this updates), maybe a stray, varied strengths."""
    own = list(SCENES[name])
    kept: list[str] = []
    for i, c in enumerate(own):
        room = len(kept) + len(own) - i - 1 >= MIN_CONCEPTS  # enough left if c goes
        if room and rng.random() < DROP and left_out.get(c, 0) < MAX_LEFT_OUT:
            left_out[c] = left_out.get(c, 0) + 1
        else:
            kept.append(c)
    if rng.random() < STRAY:
        other = rng.choice([n for n in SCENES if n != name])
        kept.append(rng.choice(SCENES[other]))
    return {concept(c): round(rng.uniform(*STRENGTH), 2) for c in kept}


def scene_of(concept_ids: Iterable[str]) -> str:
    """The scene that shares the most concepts with `concept_ids` ("" when none shares any)."""
    names = {short(c) for c in concept_ids}
    best, overlap = "", 0
    for name, members in SCENES.items():
        n = len(names.intersection(members))
        if n > overlap:
            best, overlap = name, n
    return best


def routine_period_s(dt_s: float, scenes: Mapping[str, object] = SCENES) -> float:
    """How long one pass through every scene takes: the rhythm the learner should find."""
    return len(scenes) * dt_s


def _rfc3339(ms: int) -> str:
    # Protobuf JSON's Timestamp form, in UTC to the millisecond (the vault keeps milliseconds).
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
