"""Canary routing: which set of service addresses a caller's calls go to.

A caller's bucket is a hash of its identity (tenant, else key) into 0..9999; the caller is on the
canary route when bucket < canary_percent * 100. So:

- a caller always lands on the same side while the setting stays (sticky);
- raising the share only moves callers from primary to canary, never back (1% -> 50% -> 100%
  keeps the first 1% on the canary the whole way), and lowering it does the reverse;
- the share of callers on the canary is the setting to within sampling error (the hash is
  uniform), in steps of 0.01 percentage points.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from mcp_services.common.clients import endpoint_address
from mcp_services.common.config_schema import ServicesConfig
from mcp_services.gateway.settings import GatewayConfig, GatewayRoute

Route = Literal["primary", "canary"]
ROUTES: tuple[Route, ...] = ("primary", "canary")
SERVICE_KEYS = ("episodic_vault", "sleep_scheduler", "sparse_pruner", "koopman_learner")
BUCKETS = 10_000
# Part of the hash input so buckets here are unrelated to any other use of the same identity.
_SALT = b"tori-gateway-canary-v1\x00"


def bucket(identity: str) -> int:
    """The caller's fixed place in 0..BUCKETS-1."""
    h = hashlib.sha256(_SALT + identity.encode()).digest()
    return int.from_bytes(h[:8], "big") % BUCKETS


def route_for(identity: str, canary_percent: float) -> Route:
    return "canary" if bucket(identity) < round(canary_percent * BUCKETS / 100) else "primary"


@dataclass(frozen=True)
class Targets:
    """host:port of each service, for one route."""

    episodic_vault: str
    sleep_scheduler: str
    sparse_pruner: str
    koopman_learner: str

    def of(self, service_key: str) -> str:
        return str(getattr(self, service_key))


def primary_targets(services: ServicesConfig) -> Targets:
    return Targets(**{k: endpoint_address(getattr(services, k)) for k in SERVICE_KEYS})


def canary_targets(canary: GatewayRoute, primary: Targets) -> Targets:
    """The canary's addresses; a service left empty is shared with the primary route."""
    return Targets(**{k: getattr(canary, k) or primary.of(k) for k in SERVICE_KEYS})


def targets_for(cfg: GatewayConfig, services: ServicesConfig) -> dict[Route, Targets]:
    primary = primary_targets(services)
    return {"primary": primary, "canary": canary_targets(cfg.canary, primary)}
