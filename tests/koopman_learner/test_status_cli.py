"""python -m mcp_services.koopman_learner.status against a real learner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcp_services.koopman_learner import status
from mcp_services.koopman_learner.rpc.series import series_request
from tests.conftest import free_port
from tests.koopman_learner.conftest import Learner, LearnerFactory, batch

IDS = ["concept:tide-a", "concept:tide-b", "concept:shore"]
FREQ_HZ = 1.25


def rhythm(n: int = 200, dt: float = 0.1) -> np.ndarray:
    """Two concepts swinging at FREQ_HZ a quarter period apart around the level of a third, which
    stays put (a linear system needs it to carry the level)."""
    t = np.arange(n) * dt
    w = 2 * np.pi * FREQ_HZ
    return np.vstack([0.5 + 0.45 * np.cos(w * t), 0.5 + 0.45 * np.sin(w * t), 0.6 + 0 * t])


def target(learner: Learner) -> list[str]:
    return ["--target", f"127.0.0.1:{learner.server.running.grpc_port}"]


class TestStatusCli:
    def test_the_leading_modes_are_the_level_and_the_rhythm_it_was_taught(
        self, start_learner: LearnerFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """After a trace oscillating at 1.25 Hz, the table (by significance) shows the steady
        level first, then a 1.25 Hz mode (period 0.8 s, persistence 1) led by the two swinging
        concepts; --json carries the same frequency; exit 0."""
        learner = start_learner()
        learner.stub.ProcessActivationBatch(batch([rhythm()], IDS), timeout=30)
        assert status.main([*target(learner), "--modes", "2", "--concepts", "2"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert "model v1" in lines[0] and "3 concepts" in lines[0]
        assert "modes of the default stream by significance (period in s)" in lines[1]
        level, swing = lines[3].split(), lines[4].split()
        assert level[:3] == ["1", "0", "steady"] and level[7] == "concept:shore,"
        assert swing[:4] == ["2", "1.25", "0.8", "1.000"], lines
        assert swing[4] == "1.000"  # persistence of an undamped mode
        assert set(" ".join(swing[7:]).split(", ")) == set(IDS[:2])
        assert status.main([*target(learner), "--modes", "2", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["stats"]["model_ready"] is True
        freqs = sorted(abs(m.get("frequency_hz", 0.0)) for m in out["modes"]["modes"])
        assert freqs[0] == 0.0 and abs(freqs[1] - FREQ_HZ) < 1e-6

    def test_a_named_stream_shows_periods_in_its_own_unit(
        self, start_learner: LearnerFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A one-concept series sampled monthly with a 12-month cycle: the streams line names it
        with period 12 (months), and --stream lists that mode first with period 12."""
        learner = start_learner()
        t = np.arange(120, dtype=np.float64)
        learner.stub.ProcessActivationBatch(
            series_request("sst", "sst", t, 20 + 3 * np.sin(2 * np.pi * t / 12), time_unit="month"),
            timeout=30,
        )
        assert status.main([*target(learner), "--stream", "sst", "--modes", "3"]) == 0
        out = capsys.readouterr().out.splitlines()
        (line,) = [x for x in out if x.startswith("  stream 'sst'")]
        assert "dt 1 month" in line and "periods (month) 12" in line
        assert "modes of stream 'sst' by significance (period in month)" in out[2]
        oscillating = [x.split() for x in out[4:] if "steady" not in x]
        assert float(oscillating[0][2]) == pytest.approx(12, rel=1e-3)

    def test_an_unknown_stream_is_a_usage_error(
        self, start_learner: LearnerFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--stream naming no stream: exit 2 with the learner's message."""
        learner = start_learner()
        assert status.main([*target(learner), "--stream", "nope"]) == 2
        assert "no stream named 'nope'" in capsys.readouterr().err

    def test_without_a_model_it_says_so_and_exits_1(
        self, start_learner: LearnerFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A learner that has learnt nothing: the headline, "no model yet", exit 1."""
        learner = start_learner()
        assert status.main(target(learner)) == 1
        assert "no model yet" in capsys.readouterr().out

    def test_waiting_on_a_learner_that_does_not_follow_the_vault_names_the_setting(
        self, start_learner: LearnerFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--wait-seq on a learner with follow_vault off ends at --wait-s with exit 1, naming
        koopman_learner.follow_vault."""
        learner = start_learner()
        assert status.main([*target(learner), "--wait-seq", "5", "--wait-s", "0.3"]) == 1
        assert "koopman_learner.follow_vault is off" in capsys.readouterr().err

    def test_an_unreachable_learner_is_exit_3(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Nothing listening: exit 3 with the address and the status code."""
        port = free_port()
        code = status.main(["--target", f"127.0.0.1:{port}", "--timeout", "0.5"])
        err = capsys.readouterr().err
        assert code == 3 and f"127.0.0.1:{port}" in err and "UNAVAILABLE" in err

    def test_bad_ranges_are_usage_errors(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--modes outside 0..1000 exits 2 naming the range."""
        with pytest.raises(SystemExit) as exc:
            status.main(["--modes", "-1"])
        assert exc.value.code == 2 and "give 0 to 1000" in capsys.readouterr().err
