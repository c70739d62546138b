"""Configuration: overlays, interpolation, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_services.common.config import ConfigError, deep_merge, load_config


def write(dir_: Path, name: str, text: str) -> None:
    (dir_ / name).write_text(text)


MINIMAL_SERVICES = """
services:
  episodic_vault: {port: 1, metrics_port: 2}
  sleep_scheduler: {port: 3, metrics_port: 4}
  sparse_pruner: {port: 5, metrics_port: 6}
  koopman_learner: {port: 7, metrics_port: 8}
"""


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    write(tmp_path, "base.yaml", MINIMAL_SERVICES + "sleep_scheduler:\n  t0: ${SLEEP_T0:-2.0}\n")
    write(tmp_path, "local.yaml", "")
    return tmp_path


class TestLoading:
    def test_repository_config_loads_for_every_environment(self) -> None:
        """The shipped base.yaml validates with each shipped overlay."""
        for env in ("local", "test", "container"):
            settings = load_config(env=env, environ={})
            assert settings.services.episodic_vault.port == 50051
            assert settings.sleep_scheduler.t0 == 2.0

    def test_overlay_chosen_by_tori_env_overrides_base(self, cfg_dir: Path) -> None:
        """TORI_ENV picks config/<env>.yaml, whose keys win over base.yaml."""
        write(cfg_dir, "prod.yaml", "sleep_scheduler:\n  eta: 0.02\n")
        s = load_config(config_dir=cfg_dir, environ={"TORI_ENV": "prod"})
        assert s.sleep_scheduler.eta == 0.02
        assert s.sleep_scheduler.t0 == 2.0  # base value kept where the overlay is silent

    def test_unknown_environment_names_the_known_ones(self, cfg_dir: Path) -> None:
        """A TORI_ENV without an overlay file is an error listing the overlays there are."""
        with pytest.raises(ConfigError, match=r"TORI_ENV='nope'.*\['local'\]"):
            load_config(config_dir=cfg_dir, environ={"TORI_ENV": "nope"})

    def test_deep_merge_merges_mappings_and_replaces_the_rest(self) -> None:
        """Nested mappings merge key by key; lists and scalars are replaced whole."""
        merged = deep_merge({"a": {"x": 1, "y": [1]}, "b": 1}, {"a": {"y": [2]}, "c": 3})
        assert merged == {"a": {"x": 1, "y": [2]}, "b": 1, "c": 3}


class TestInterpolation:
    def test_variable_from_environment_wins_over_default(self, cfg_dir: Path) -> None:
        """${VAR:-default} takes VAR when it is set, and values are coerced to the key's type."""
        assert (
            load_config(config_dir=cfg_dir, environ={"SLEEP_T0": "3.5"}).sleep_scheduler.t0 == 3.5
        )
        assert load_config(config_dir=cfg_dir, environ={}).sleep_scheduler.t0 == 2.0

    def test_nested_default_and_dollar_escape(self, cfg_dir: Path) -> None:
        """A default may itself hold ${...}, and $$ is a literal dollar."""
        write(cfg_dir, "local.yaml", "paths:\n  var_dir: ${A:-${B:-/x}}/$$y\n")
        assert load_config(config_dir=cfg_dir, environ={}).paths.var_dir == "/x/$y"
        assert load_config(config_dir=cfg_dir, environ={"B": "/b"}).paths.var_dir == "/b/$y"

    def test_required_variable_missing_names_key_and_variable(self, cfg_dir: Path) -> None:
        """${VAR} without a default and without VAR set names the key and the variable."""
        write(cfg_dir, "local.yaml", "redis:\n  url: ${MY_REDIS}\n")
        with pytest.raises(
            ConfigError, match=r"redis\.url: environment variable MY_REDIS is not set"
        ):
            load_config(config_dir=cfg_dir, environ={})


class TestValidation:
    def test_wrong_type_names_the_key_the_value_and_the_fix(self, cfg_dir: Path) -> None:
        """A value of the wrong type is reported with its dotted key and the value given."""
        with pytest.raises(ConfigError) as err:
            load_config(config_dir=cfg_dir, environ={"SLEEP_T0": "hot"})
        assert "sleep_scheduler.t0" in str(err.value)
        assert "'hot'" in str(err.value)
        assert "fix it in base.yaml / local.yaml" in str(err.value)

    def test_out_of_range_value_is_rejected(self, cfg_dir: Path) -> None:
        """Ranges are enforced: a negative temperature is an error on that key."""
        with pytest.raises(
            ConfigError, match=r"sleep_scheduler\.t0: Input should be greater than 0"
        ):
            load_config(config_dir=cfg_dir, environ={"SLEEP_T0": "-1"})

    def test_unknown_key_is_rejected_with_its_path(self, cfg_dir: Path) -> None:
        """A misspelt key is an error naming it, not silently ignored."""
        write(cfg_dir, "local.yaml", "vault:\n  sqlite:\n    jornal_mode: WAL\n")
        with pytest.raises(ConfigError, match=r"vault\.sqlite\.jornal_mode: unknown key"):
            load_config(config_dir=cfg_dir, environ={})

    def test_enumerated_value_lists_the_choices(self, cfg_dir: Path) -> None:
        """A value outside an enumeration says which values are allowed."""
        write(cfg_dir, "local.yaml", "vault:\n  sqlite:\n    synchronous: fast\n")
        with pytest.raises(ConfigError, match=r"vault\.sqlite\.synchronous: .*'FULL'"):
            load_config(config_dir=cfg_dir, environ={})

    def test_two_services_on_one_port_is_an_error(self, cfg_dir: Path) -> None:
        """Two endpoints sharing a port are caught at load, naming both keys."""
        write(cfg_dir, "local.yaml", "services:\n  sparse_pruner: {port: 1, metrics_port: 6}\n")
        with pytest.raises(
            ConfigError, match=r"services\.sparse_pruner\.port and services\.episodic_vault\.port"
        ):
            load_config(config_dir=cfg_dir, environ={})

    def test_api_keys_from_environment_are_split(self, cfg_dir: Path) -> None:
        """TORI_API_KEYS=a,b becomes two keys."""
        write(cfg_dir, "local.yaml", "auth:\n  api_keys: ${TORI_API_KEYS:-}\n")
        s = load_config(config_dir=cfg_dir, environ={"TORI_API_KEYS": "k1, k2,"})
        assert s.auth.api_keys == ["k1", "k2"]

    def test_invalid_yaml_names_the_file(self, cfg_dir: Path) -> None:
        """A YAML syntax error names the file to fix."""
        write(cfg_dir, "local.yaml", "vault: [unclosed\n")
        with pytest.raises(ConfigError, match=r"local\.yaml: not valid YAML"):
            load_config(config_dir=cfg_dir, environ={})
