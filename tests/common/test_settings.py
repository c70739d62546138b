"""Each service owns its config section: registered with the loader, its live keys declared on the
model (the ``Live`` marker), and a running service's live keys exactly those."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, Field
from structlog.testing import capture_logs

from mcp_services.common.config import load_config
from mcp_services.common.config_schema import (
    Live,
    RedisConfig,
    SettingError,
    Settings,
    StrictModel,
    live_fields,
    live_keys,
    register_section,
    section_of,
    sections,
    settings_model,
    updated,
)
from mcp_services.common.server import Context, Service
from mcp_services.episodic_vault.settings import VaultConfig
from mcp_services.koopman_learner.server import KoopmanLearnerService
from mcp_services.koopman_learner.settings import KoopmanLearnerConfig
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from mcp_services.sleep_scheduler.settings import SleepSchedulerConfig
from mcp_services.sparse_pruner.server import SparsePrunerService
from mcp_services.sparse_pruner.settings import SparsePrunerConfig
from tests.common.reloading import other_value, served, wait_for


class _Inner(StrictModel):
    depth: Annotated[int, Field(ge=1), Live] = 3
    path: str = ""


class _Probe(StrictModel):
    rate: Annotated[float, Field(gt=0, le=1, description="a share"), Live] = 0.5
    name: str = "x"
    inner: _Inner = _Inner()


class TestRegistry:
    def test_a_section_registered_twice_is_refused(self) -> None:
        """A second "vault", or a section named like a shared one, is refused; nothing changes."""
        with pytest.raises(ValueError, match="'vault' is already registered"):
            register_section("vault", VaultConfig, service="episodic_vault")
        with pytest.raises(ValueError, match="'redis' is already registered"):
            register_section("redis", RedisConfig)
        assert sections()["vault"].model is VaultConfig
        assert "redis" not in sections()

    def test_settings_are_the_shared_sections_and_every_registered_one(self) -> None:
        model = settings_model()
        assert issubclass(model, Settings)
        assert set(model.model_fields) == set(Settings.model_fields) | set(sections())
        assert {"vault", "sleep_scheduler", "sparse_pruner", "koopman_learner"} <= set(sections())
        assert sections()["sparse_pruner"].model is SparsePrunerConfig
        assert isinstance(load_config("test").sparse_pruner, SparsePrunerConfig)

    def test_a_section_is_found_by_its_model(self) -> None:
        """section_of: how a service reads a section the type checker does not know by name."""
        settings = load_config("test")
        assert section_of(settings, SparsePrunerConfig) is settings.sparse_pruner
        with pytest.raises(KeyError, match="_Probe"):
            section_of(settings, _Probe)


class TestLiveMarker:
    def test_live_keys_are_the_marked_fields_sub_models_included(self) -> None:
        assert live_fields(_Probe) == ("rate",)
        assert live_keys(_Probe, "probe") == ("probe.rate", "probe.inner.depth")

    def test_updated_names_the_field_and_its_range(self) -> None:
        """A knob changed by name is checked by the model; the message says the range."""
        probe = _Probe()
        assert updated(probe, {"rate": 0.25}, ["rate"], "probe knob").rate == 0.25
        with pytest.raises(
            SettingError, match=r"^rate: must be in \(0, 1\] \(a share\), got 2\.0$"
        ):
            updated(probe, {"rate": 2.0}, ["rate"], "probe knob")
        with pytest.raises(SettingError, match=r"\['name'\]: not a probe knob"):
            updated(probe, {"name": "y"}, ["rate"], "probe knob")
        assert probe.rate == 0.5


# A service, its section and model, and an overlay that keeps it from waiting on others.
SERVICES: list[tuple[str, Callable[[Context], Service], type[BaseModel], dict[str, object]]] = [
    ("sleep_scheduler", SleepSchedulerService, SleepSchedulerConfig, {"pressure_threshold": 0}),
    ("sparse_pruner", SparsePrunerService, SparsePrunerConfig, {"scheduler_timeout_s": 2}),
    ("koopman_learner", KoopmanLearnerService, KoopmanLearnerConfig, {"follow_vault": False}),
]


@pytest.mark.parametrize(
    ("section", "factory", "model", "overlay"), SERVICES, ids=[s[0] for s in SERVICES]
)
def test_a_running_service_applies_the_fields_its_model_declares_live(
    tmp_path: Path,
    section: str,
    factory: Callable[[Context], Service],
    model: type[BaseModel],
    overlay: dict[str, object],
) -> None:
    """The service's live keys are its model's Live fields; editing one is applied, editing a
    field not marked Live is reported "restart needed" and leaves the running value."""
    name = section.replace("_", "-")
    with served(tmp_path, name, section, factory, {section: overlay}) as svc:
        assert set(svc.reloader.live_keys) == set(live_keys(model, section))
        running = getattr(svc.reloader.settings, section)
        live = live_fields(model)[0]
        new = other_value(model, live, getattr(running, live), tmp_path)
        svc.edit(section, {live: new})
        assert wait_for(lambda: svc.running(f"{section}.{live}") == new)
        assert wait_for(lambda: svc.reloads("applied") == 1)

        held = next(n for n in model.model_fields if n not in live_fields(model))
        current = getattr(running, held)
        with capture_logs() as logs:
            svc.edit(section, {held: other_value(model, held, current, tmp_path)})
            assert wait_for(lambda: svc.reloads("restart_needed") == 1)
        assert [e["key"] for e in logs if e["event"] == "config_change_needs_restart"] == [
            f"{section}.{held}"
        ]
        assert getattr(getattr(svc.reloader.settings, section), held) == current
        assert svc.reloads("applied") == 1
