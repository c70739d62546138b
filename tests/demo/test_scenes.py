"""The demo's scenes: noisy copies that stay one memory a scene, laid out as the learner reads."""

from __future__ import annotations

import json
import time
from collections import Counter

from google.protobuf.json_format import Parse

from mcp_services.common.config import load_config
from mcp_services.demo import scenes
from mcp_services.episodic_vault.rpc.validation import validate_episode
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.koopman_learner.domain.traces import STREAM_FLUSH_SNAPSHOTS

DT_MS = 100


class TestRoutine:
    def test_a_seed_repeats_its_noise_and_another_seed_does_not(self) -> None:
        """The same seed gives the same episodes; a different seed different strengths."""
        assert scenes.routine("r", DT_MS, 7) == scenes.routine("r", DT_MS, 7)
        assert scenes.routine("r", DT_MS, 7) != scenes.routine("r", DT_MS, 8)

    def test_every_copy_is_its_scene_with_a_little_noise(self) -> None:
        """Each episode keeps at least MIN_CONCEPTS of its scene and at most one stray, with
        active strengths; no concept is left out of more than MAX_LEFT_OUT copies of its scene;
        across seeds both kinds of noise occur."""
        left_out_total = strays_total = 0
        for seed in range(50):
            episodes = scenes.routine("r", DT_MS, seed)
            missing: Counter[tuple[str, str]] = Counter()
            for ep in episodes:
                own = {scenes.concept(c) for c in scenes.SCENES[ep.scene]}
                kept = own & set(ep.strengths)
                assert len(kept) >= scenes.MIN_CONCEPTS
                assert len(set(ep.strengths) - own) <= 1
                assert all(0.5 < s <= 1.0 for s in ep.strengths.values())
                missing.update((ep.scene, c) for c in own - kept)
                left_out_total += len(own - kept)
                strays_total += len(set(ep.strengths) - own)
            assert max(missing.values(), default=0) <= scenes.MAX_LEFT_OUT
        assert left_out_total > 0 and strays_total > 0

    def test_the_learner_reads_the_routine_as_one_time_series(self) -> None:
        """Enough episodes for the learner to fit them as one trace, one dt apart, visiting the
        scenes in the same order every round."""
        episodes = scenes.routine("r", DT_MS, 1)
        assert len(episodes) == scenes.ROUNDS * len(scenes.SCENES) >= STREAM_FLUSH_SNAPSHOTS
        assert [ep.offset_ms for ep in episodes] == [i * DT_MS for i in range(len(episodes))]
        order = list(scenes.SCENES)
        assert [ep.scene for ep in episodes] == order * scenes.ROUNDS
        assert scenes.routine_period_s(0.1) == len(order) * 0.1

    def test_each_line_is_an_episode_the_vault_accepts(self) -> None:
        """as_json parses as an Episode and passes the vault's own validation, with the run's
        source and tags and a timestamp to the millisecond."""
        cfg = load_config(environ={}).vault
        start_ms = int(time.time() * 1000) - 10_000
        for ep in scenes.routine("run-1", DT_MS, 3)[:10]:
            msg = Parse(json.dumps(ep.as_json(start_ms, "run-1")), pb.Episode())
            validate_episode(msg, cfg, int(time.time() * 1000))
            assert msg.timestamp.ToMilliseconds() == start_ms + ep.offset_ms
            assert (msg.source.type, msg.source.id) == ("demo", "run-1")
            assert list(msg.tags) == ["demo", "demo-run-1", f"scene:{ep.scene}"]


class TestSceneOf:
    def test_the_scene_sharing_most_concepts_wins(self) -> None:
        """scene_of names the scene with the largest overlap, "" for unknown concepts."""
        assert scenes.scene_of(["concept:kettle", "concept:cup", "concept:dog"]) == "kitchen"
        assert scenes.scene_of(["concept:zebra"]) == ""

    def test_every_cue_is_part_of_its_scene(self) -> None:
        """The demo's cues are partial: real concepts of their scene, fewer than all."""
        for scene, cue in scenes.CUES:
            assert set(cue) < set(scenes.SCENES[scene])
