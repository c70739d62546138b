"""The fleet CLI's section of the configuration (``fleet``), registered with the loader."""

from __future__ import annotations

from mcp_services.common.config_schema import Port, PositiveFloat, StrictModel, register_section


class FleetConfig(StrictModel):
    # Port of the private Redis the local fleet starts when redis.url is empty.
    redis_port: Port = 6380
    # How long `make up` waits for each service to report SERVING.
    start_timeout_s: PositiveFloat = 60.0


register_section("fleet", FleetConfig)
