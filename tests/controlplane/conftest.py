"""The control-plane tier: every test here runs against the real servers and is marked ``controlplane``."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Load the fixtures plugin unless the top conftest already did (it normally does)."""
    if not config.pluginmanager.has_plugin("kubecp.pytest_plugin"):
        config.pluginmanager.import_plugin("kubecp.pytest_plugin")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this directory's tests ``controlplane`` (``make test-unit`` deselects them)."""
    here = str(config.rootpath / "tests" / "controlplane")
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.controlplane)
