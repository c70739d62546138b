"""Where the built-in sections join the configuration: importing each module registers its section.

common/config_schema.py imports this module the first time the whole Settings model is needed
(common never imports a service at module level). A new service adds its settings module here;
a service outside the package (a test's) calls ``register_section`` itself before loading.
"""

from __future__ import annotations

from mcp_services.episodic_vault import settings as _vault
from mcp_services.fleet import settings as _fleet
from mcp_services.gateway import settings as _gateway
from mcp_services.koopman_learner import settings as _koopman_learner
from mcp_services.sleep_scheduler import settings as _sleep_scheduler
from mcp_services.sparse_pruner import settings as _sparse_pruner

BUILTIN = (_vault, _sleep_scheduler, _sparse_pruner, _koopman_learner, _fleet, _gateway)
