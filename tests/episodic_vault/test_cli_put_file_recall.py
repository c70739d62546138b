"""vault-cli put-file and recall against a real vault (vault only: no scheduler to complete)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcp_services.episodic_vault import cli
from tests.episodic_vault.conftest import VaultFactory


def line(episode_id: str, concepts: dict[str, float]) -> str:
    return json.dumps(
        {
            "id": episode_id,
            "tags": ["cli"],
            "activation": {"conceptIds": list(concepts), "strengths": list(concepts.values())},
        }
    )


KITCHEN = {"concept:kettle": 0.9, "concept:cup": 0.8, "concept:tea": 0.9}
PARK = {"concept:dog": 0.9, "concept:ball": 0.7}


class TestPutFile:
    def test_every_line_is_stored_in_one_batch_and_a_repeat_is_existing(
        self, start_vault: VaultFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """put-file stores each episode of the file (blank lines skipped); putting the same file
        again reports every one as existing and stores nothing new."""
        v = start_vault()
        path = tmp_path / "episodes.jsonl"
        path.write_text(f"{line('k1', KITCHEN)}\n\n{line('p1', PARK)}\n{line('k2', KITCHEN)}\n")
        assert cli.main(["--target", v.target, "put-file", str(path)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["created"] == 3 and [r["id"] for r in out["results"]] == ["k1", "p1", "k2"]
        assert cli.main(["--target", v.target, "put-file", str(path)]) == 0
        assert json.loads(capsys.readouterr().out)["existing"] == 3
        assert v.count() == 3

    def test_a_bad_line_names_its_number_and_stores_nothing(
        self, start_vault: VaultFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A line that is not an episode: exit 2 with the file, the line number and an example;
        the good lines before it are not stored either."""
        v = start_vault()
        path = tmp_path / "bad.jsonl"
        path.write_text(f'{line("k1", KITCHEN)}\n{{"conceptz": 1}}\n')
        assert cli.main(["--target", v.target, "put-file", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path} line 2 is not an episode" in err and '"conceptIds"' in err
        assert v.count() == 0

    def test_an_empty_file_is_refused(
        self, start_vault: VaultFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A file without an episode is a usage error (exit 2), not an empty batch."""
        v = start_vault()
        path = tmp_path / "empty.jsonl"
        path.write_text("\n")
        assert cli.main(["--target", v.target, "put-file", str(path)]) == 2
        assert "holds no episode" in capsys.readouterr().err


class TestRecall:
    def test_recall_ranks_by_the_cue_and_says_why_completion_was_not_applied(
        self, start_vault: VaultFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """recall --concepts returns the matching episodes first; --no-complete reports DISABLED,
        and without it the vault says the scheduler it asked did not answer (none runs here)."""
        v = start_vault(vault={"recall": {"completion_timeout_ms": 200}})
        path = tmp_path / "episodes.jsonl"
        path.write_text("\n".join([line("k1", KITCHEN), line("p1", PARK)]))
        assert cli.main(["--target", v.target, "put-file", str(path)]) == 0
        capsys.readouterr()
        args = ["--target", v.target, "recall", "--concepts", "concept:kettle,concept:cup=0.5"]
        assert cli.main([*args, "--no-complete", "--k", "5"]) == 0
        plain = json.loads(capsys.readouterr().out)
        assert [h["episode"]["id"] for h in plain["hits"]] == ["k1"]
        assert plain["hits"][0]["matched_concepts"] == ["concept:kettle", "concept:cup"]
        assert plain["completion"] == "COMPLETION_DISABLED"
        assert plain["effective_cue"]["strengths"] == [1.0, 0.5]
        assert cli.main(args) == 0
        asked = json.loads(capsys.readouterr().out)
        assert asked["completion"] == "COMPLETION_UNAVAILABLE"
        assert "ranked by the cue as given" in asked["completion_detail"]

    def test_k_out_of_range_is_a_usage_error(
        self, start_vault: VaultFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--k 0 exits 2 naming the range."""
        v = start_vault()
        with pytest.raises(SystemExit) as exc:
            cli.main(["--target", v.target, "recall", "--concepts", "a", "--k", "0"])
        assert exc.value.code == 2 and "give 1 to 1000" in capsys.readouterr().err
