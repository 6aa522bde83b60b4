"""pytest fixtures for tests that run kubestep's real images on the process node.

Enable with ``pytest_plugins = ["kubecp.pytest_images"]`` (next to ``kubecp.pytest_plugin``).

* ``image_registry`` (session): a :class:`kubecp.registry.Registry` on 127.0.0.1 (a free port),
  stopped after the session. Its storage is kept in the cache (one per build of the images), so
  pushing an unchanged image again costs nothing. The process node pulls the images of such a registry itself.
* ``kubestep_images`` (session): the runner and operator images of the working tree, pushed to
  ``image_registry``: ``kubestep_images.runner`` and ``.operator`` are their references there.

What they need is built after collection, before the first test (never inside a test's timeout),
once: the Debian base (mmdebstrap), the registry (Go), the images (buildah); all cached under
``~/.cache/kubestep``. When that cannot be done (a tool missing, a failed build), every test using
them fails with the reason; none is skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubecp.binaries import BuildError
from kubecp.gotools import ensure_tool
from kubecp.images import ProjectImages, ensure_image_from_runner, ensure_images, images_root
from kubecp.registry import Registry

FIXTURES = ("image_registry", "kubestep_images")
UNUSED_STORAGE_SECONDS = 6 * 3600.0

_built = pytest.StashKey[ProjectImages]()
_build_error = pytest.StashKey[BaseException]()


@dataclass(frozen=True)
class PushedImages:
    """kubestep's images in the session's registry."""

    registry: Registry
    local: ProjectImages
    runner: str
    operator: str

    def push_from_runner(self, repository: str, dockerfile: Path, context: Path) -> str:
        """Build (unless cached) an image ``FROM`` the runner image and push it; its reference."""
        name = ensure_image_from_runner(repository, dockerfile, context, self.local)
        reference = f"{self.registry.host}/{repository}:{name.rsplit(':', 1)[1]}"
        self.local.buildah.push(name, reference)
        return reference


def _needs_images(item: pytest.Item) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in FIXTURES)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the registry and the images before the first test, if a test needs them."""
    if session.config.option.collectonly or not any(_needs_images(item) for item in session.items):
        return
    try:
        ensure_tool("registry")
        session.config.stash[_built] = ensure_images()
    except (BuildError, OSError) as error:
        # Reported by the fixtures, as a failure of every test that needs them.
        session.config.stash[_build_error] = error


@pytest.fixture(scope="session")
def image_registry(pytestconfig: pytest.Config) -> Iterator[Registry]:
    """A registry on 127.0.0.1 for this session."""
    if (error := pytestconfig.stash.get(_build_error, None)) is not None:
        pytest.fail(f"the images for this test could not be built: {error}", pytrace=False)
    # One storage per build of the images, shared by the sessions that test it (blobs are
    # content-addressed and written once), so pushing them again costs nothing; others, unused
    # for a while, go: a registry keeps every blob it was ever given.
    built = pytestconfig.stash.get(_built, None)
    storages = images_root() / "registry"
    storage = storages / (built.tag if built is not None else "none")
    storage.mkdir(parents=True, exist_ok=True)
    os.utime(storage)
    for old in storages.iterdir():
        if old.is_dir() and old.stat().st_mtime < time.time() - UNUSED_STORAGE_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
    run_dir = Path(tempfile.mkdtemp(prefix="kubecp-registry-"))
    registry = Registry(storage, config_dir=run_dir)
    try:
        registry.start()
    except (BuildError, OSError, RuntimeError) as error:
        shutil.rmtree(run_dir, ignore_errors=True)
        pytest.fail(f"the registry could not be started: {error}", pytrace=False)
    try:
        yield registry
    finally:
        registry.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kubestep_images(pytestconfig: pytest.Config, image_registry: Registry) -> PushedImages:
    """The working tree's runner and operator images, pushed to ``image_registry``."""
    local = pytestconfig.stash.get(_built, None)
    if local is None:
        pytest.fail("the images were not built (no test asked for them at collection)", pytrace=False)
    try:
        pushed = local.push(image_registry.host)
    except BuildError as error:
        pytest.fail(f"pushing the images failed: {error}", pytrace=False)
    return PushedImages(image_registry, local, pushed["runner"], pushed["operator"])
