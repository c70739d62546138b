"""prometheus/: the scrape config and rules pass promtool, and the alert unit tests prove each
tuning alert fires on the condition of the tuning table and stays quiet otherwise, including on an
idle fleet and after consolidation cycles that had nothing to learn."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_services.sparse_pruner.domain import GUARD_SIGMAS
from tests.deploy.promql import BUILTIN, exported_names, series_names

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "prometheus"
OVERRIDE = ROOT / "docker-compose.override.yml"

# The tuning table of the deployment guide: alert -> the knob its summary must name.
TUNING = {
    "SleepEnergyDropLow": "SLEEP_T0",
    "SleepSettleLoopsHigh": "SLEEP_T0",
    "SleepEnergyDeltaOscillating": "SLEEP_ETA",
    "GraphGrowthHigh": "PRUNE_TAU",
    "PsiDriftHigh": "KCL_RANK",
    "KclModesGrowing": "KCL_L1_STRENGTH",
    "PrunerQualityDrop": "PRUNE_TAU",
}
QUIET = ("quiet/idle_fleet_test.yml", "quiet/nothing_to_learn_test.yml")
# The tuning alerts as they were before issue 15, and the quiet test each one fails: a scheduler
# that ran no cycle exports sleep_energy_drop 0; cycles with nothing to learn anneal rehearsals,
# flip energy_delta by a hair, and are followed by pruning runs whose drop is within the noise.
PRE_ISSUE = {
    "SleepEnergyDropLow": ("sleep_energy_drop < 0.05", QUIET[0]),
    "SleepSettleLoopsHigh": ("sleep_settle_loops > 50", QUIET[1]),
    "SleepEnergyDeltaOscillating": ("changes(sgn(energy_delta)[2h:]) >= 3", QUIET[1]),
    "PrunerQualityDrop": ("pruner_quality_before - pruner_quality_after > 0.05", QUIET[1]),
}


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, (
        "promtool is not installed: `apt-get install -y --no-install-recommends prometheus` "
        "(scripts/test.sh installs it when missing)"
    )
    return subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )  # fmt: skip


def rules(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((PROM / "rules" / name).read_text())
    return data


def all_rules() -> list[dict[str, Any]]:
    return [
        r for f in ("recording.yml", "alerts.yml") for g in rules(f)["groups"] for r in g["rules"]
    ]


class TestPromtool:
    def test_config_and_rules_pass_promtool_check(self) -> None:
        """`promtool check config` loads prometheus.yml and every rule file it names."""
        proc = promtool("check", "config", str(PROM / "prometheus.yml"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "2 rule files found" in proc.stdout
        proc = promtool("check", "rules", *(str(p) for p in (PROM / "rules").glob("*.yml")))
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_alert_unit_tests_pass(self) -> None:
        """promtool runs prometheus/tests/*/*_test.yml: every alert fires on its condition, with the
        labels and the summary (naming the knob) it promises, and stays quiet otherwise."""
        tests = sorted(str(p) for p in (PROM / "tests").glob("*/*_test.yml"))
        assert len(tests) == len(TUNING) + 1 + len(QUIET)
        proc = promtool("test", "rules", *tests)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("SUCCESS") == len(tests)

    @pytest.mark.parametrize("alert", sorted(TUNING))
    def test_each_tuning_alert_is_tested_both_ways(self, alert: str, tmp_path: Path) -> None:
        """The unit tests catch a broken alert: made never to fire, a firing case fails; made
        always to fire, a quiet case fails. So each tuning alert has both kinds of test."""
        for broken, expect in (("vector(0) > 1", "exp:[\n            0:"), ("vector(1)", "got:[")):
            work = tmp_path / broken.replace(" ", "").replace(">", "gt")
            shutil.copytree(PROM, work)
            data = rules("alerts.yml")
            for group in data["groups"]:
                for rule in group["rules"]:
                    if rule.get("alert") == alert:
                        rule["expr"] = broken
            (work / "rules" / "alerts.yml").write_text(yaml.safe_dump(data, sort_keys=False))
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", alert).lower()
            proc = promtool("test", "rules", f"tests/tuning/{snake}_test.yml", cwd=work)
            assert proc.returncode != 0, f"{alert} as {broken!r} still passes the tests"
            out = proc.stdout + proc.stderr
            assert f"alertname: {alert}" in out and expect in out, out


def with_alert_expr(alert: str, expr: str, work: Path) -> Path:
    """A copy of prometheus/ under ``work`` in which ``alert`` reads ``expr``."""
    shutil.copytree(PROM, work)
    data = rules("alerts.yml")
    for group in data["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = expr
    (work / "rules" / "alerts.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return work


class TestQuietFleet:
    """No tuning alert fires on an idle fleet or after cycles with nothing to learn."""

    def test_the_quiet_tests_check_every_tuning_alert_over_two_hours(self) -> None:
        """Each quiet test expects no alert from every tuning alert at 30, 60, 90 and 120
        minutes (so none fires at any point, and none after its 'for' has run out)."""
        for name in QUIET:
            data = yaml.safe_load((PROM / "tests" / name).read_text())
            checked: dict[str, set[str]] = {}
            for test in data["tests"]:
                for case in test["alert_rule_test"]:
                    assert case["exp_alerts"] == [], (name, case)
                    checked.setdefault(case["alertname"], set()).add(case["eval_time"])
            assert set(checked) == set(TUNING), name
            for alert, times in checked.items():
                assert times >= {"30m", "60m", "90m", "120m"}, (name, alert)

    @pytest.mark.parametrize("alert", sorted(PRE_ISSUE))
    def test_the_pre_issue_rule_fails_its_quiet_test(self, alert: str, tmp_path: Path) -> None:
        """The alert as it read before issue 15 fires on the idle fleet or after cycles with
        nothing to learn: the quiet tests catch exactly the false alarms the issue reported."""
        expr, test = PRE_ISSUE[alert]
        work = with_alert_expr(alert, expr, tmp_path / "prom")
        proc = promtool("test", "rules", f"tests/{test}", cwd=work)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"{alert} as {expr!r} passes {test}"
        assert f"alertname: {alert}" in out and "got:[" in out, out

    @pytest.mark.parametrize("alert", sorted(TUNING))
    def test_an_alert_that_always_fires_fails_both_quiet_tests(
        self, alert: str, tmp_path: Path
    ) -> None:
        """Made to fire unconditionally, each tuning alert fails both quiet tests (they check
        it, not just the rules that happened to be quiet)."""
        work = with_alert_expr(alert, "vector(1)", tmp_path / "prom")
        for test in QUIET:
            proc = promtool("test", "rules", f"tests/{test}", cwd=work)
            assert proc.returncode != 0, f"{alert} always firing passes {test}"

    def test_the_quality_alert_uses_the_guards_noise_floor(self) -> None:
        """PrunerQualityDrop ignores a drop within GUARD_SIGMAS standard errors, as the guard
        does (the factor in the rule is the guard's constant)."""
        (rule,) = [r for r in all_rules() if r.get("alert") == "PrunerQualityDrop"]
        assert f"clamp_min({GUARD_SIGMAS:g} * pruner_quality_stderr, 0.05)" in rule["expr"]


class TestRuleContent:
    def test_every_tuning_row_has_an_alert_naming_its_knob(self) -> None:
        """Each tuning alert carries kind=tuning and its knob, the summary says to turn that knob,
        and the knob is one the override file sets (or, for eta, the one it documents)."""
        alerts = {r["alert"]: r for r in all_rules() if "alert" in r}
        override = OVERRIDE.read_text()
        for alert, knob in TUNING.items():
            rule = alerts[alert]
            assert rule["labels"]["kind"] == "tuning" and rule["labels"]["knob"] == knob
            assert knob in rule["annotations"]["summary"], alert
            assert "docker-compose.override.yml" in rule["annotations"]["summary"], alert
            assert re.search(rf"^\s*{knob}:", override, re.M), f"{knob} is not in the override"

    def test_service_alerts_cover_down_errors_and_latency(self) -> None:
        """The usual service alerts are there, each with a summary saying what to do."""
        alerts = {r["alert"]: r for r in all_rules() if "alert" in r}
        for name in ("ToriServiceDown", "ToriGrpcErrorRatioHigh", "ToriGrpcLatencyHigh"):
            assert alerts[name]["labels"]["kind"] == "service"
            assert len(alerts[name]["annotations"]["summary"]) > 40

    def test_rules_use_only_metrics_the_services_export(self) -> None:
        """Every series a rule reads is declared in mcp_services.common.metric_names (or the
        gateway's metrics), recorded by another rule, or built into Prometheus."""
        recorded = {r["record"] for r in all_rules() if "record" in r}
        known = exported_names() | recorded | BUILTIN
        for rule in all_rules():
            unknown = series_names(rule["expr"]) - known
            assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)}"

    def test_the_name_check_catches_an_unknown_metric(self) -> None:
        """The check above can fail: a misspelt metric is not a known name."""
        names = series_names('sum by (job) (rate(grpc_server_handled_totl{grpc_code="OK"}[5m]))')
        assert names == {"grpc_server_handled_totl"}
        assert not names <= exported_names()

    def test_scrape_config_names_every_service_by_its_compose_name(self) -> None:
        """prometheus.yml scrapes every service under its compose service name and port."""
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
        config = yaml.safe_load((PROM / "prometheus.yml").read_text())
        jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
        for name in ("episodic-vault", "sleep-scheduler", "sparse-pruner", "koopman-learner",
                     "mcp-gateway"):  # fmt: skip
            (target,) = jobs[name]
            host, port = target.split(":")
            assert host == name and f"{port}:{port}" in compose[name]["ports"]
