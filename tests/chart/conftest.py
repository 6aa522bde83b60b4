"""The Helm chart, rendered and installed with the real ``helm`` (built from its Go module, pinned).

helm is built once, after collection and before the first test (outside every test's timeout), when a
collected test uses the ``helm`` fixture. If it cannot be built, those tests fail with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helm_chart import Helm

from kubecp.binaries import BuildError
from kubecp.gotools import ensure_tool

_helm_build = pytest.StashKey[Path | BuildError]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build helm before the first test when a collected test needs it."""
    if session.config.option.collectonly:
        return
    if not any("helm" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    try:
        session.config.stash[_helm_build] = ensure_tool("helm")
    except BuildError as error:
        session.config.stash[_helm_build] = error


@pytest.fixture(scope="session")
def helm(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    """The real helm, built before the tests (see the module's docstring)."""
    built = pytestconfig.stash.get(_helm_build, None)
    if isinstance(built, BuildError):
        pytest.fail(f"helm could not be built: {built}", pytrace=False)
    if built is None:  # e.g. a test selected by a plugin after collection: build now
        built = ensure_tool("helm")
    yield Helm(built, tmp_path_factory.mktemp("helm-home"))
