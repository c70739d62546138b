"""tori-ops backup says what it leaves out: other namespaces' data is not in a backup yet."""

from __future__ import annotations

from pathlib import Path

from mcp_services.common.config import load_config
from mcp_services.episodic_vault.backends import open_backend
from mcp_services.episodic_vault.namespaces import namespace_config
from mcp_services.sleep_scheduler.server import graph_dir
from tests.conftest import service_environ
from tests.ops.runner import ops
from tests.ops.test_backup import _populate


def test_a_backup_names_the_namespaces_it_does_not_hold(tmp_path: Path) -> None:
    """Without other namespaces a backup warns of nothing; with bob's vault store and graph
    directory beside the default's, it still succeeds and warns naming both directories."""
    env = service_environ(tmp_path / "src")
    _populate(env)
    alone = ops(env, "backup", "--out", str(tmp_path / "b1"))
    assert alone.returncode == 0 and "warning" not in alone.stderr, alone.stderr
    settings = load_config(environ=env)
    open_backend(namespace_config(settings.vault, "bob")).close()
    graphs = Path(graph_dir(settings)) / "namespaces" / "bob"
    graphs.mkdir(parents=True)
    made = ops(env, "backup", "--out", str(tmp_path / "b2"))
    assert made.returncode == 0, made.stderr
    assert "warning: the default namespace only; 2 namespace directories" in made.stderr
    vault_dir = Path(settings.vault.sqlite.path).parent / "namespaces" / "bob"
    assert str(vault_dir) in made.stderr and str(graphs) in made.stderr
