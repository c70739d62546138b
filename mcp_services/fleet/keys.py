"""The local fleet's service keys: auth is on whether or not the operator configured a key.

When auth.api_keys / TORI_API_KEYS_FILE give keys, the fleet uses them. Otherwise it makes a key
file under its var dir (<var_dir>/secrets/api_keys, 0600 in a 0700 directory) holding one fresh
admin key, keeps it across restarts, and hands it to every process it starts. The CLIs find the
same file (mcp_services/common/clients.py, fleet_keys_file), so nobody types a key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from mcp_services.common.auth import (
    AuthConfigError,
    Role,
    ServiceKey,
    load_service_keys,
)
from mcp_services.common.clients import fleet_keys_file
from mcp_services.common.config_schema import AuthConfig, Settings


def _needs_admin(keys: list[ServiceKey], where: str) -> None:
    if not any(k.role is Role.ADMIN and k.namespaces is None for k in keys):
        raise AuthConfigError(
            f"{where} holds no admin key over every namespace; the services call each other with "
            "one (the pruner commits graphs, which needs admin): add a line 'KEY admin'"
        )


def write_new_key_file(path: Path) -> None:
    """Create ``path`` (0600, parent 0700) holding one fresh admin key; never overwrites."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# Service keys of the local fleet: KEY [ROLE [NAMESPACES]], one a line.\n")
        out.write(f"{secrets.token_urlsafe(32)} admin\n")


def ensure_fleet_keys(settings: Settings) -> tuple[Path | None, str]:
    """The key file the fleet's processes get (None: the configured keys) and where keys came
    from, for the operator.

    Raises:
        AuthConfigError: the configured keys are unusable or hold no admin key.
    """
    configured = load_service_keys(settings.auth)
    if configured:
        where = settings.auth.api_keys_file or "auth.api_keys"
        _needs_admin(configured, where)
        return None, f"{where} (configured)"
    path = fleet_keys_file(settings)
    created = not path.exists()
    if created:
        write_new_key_file(path)
    keys = load_service_keys(AuthConfig(api_keys_file=str(path)))
    if not keys:
        raise AuthConfigError(
            f"{path} holds no key; delete it and the fleet makes a new one, or add 'KEY admin'"
        )
    _needs_admin(keys, str(path))
    return path, f"{path} ({'created' if created else 'kept'}, 0600)"
