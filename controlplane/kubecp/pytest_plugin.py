"""pytest fixtures for tests against the real control plane.

Enable with ``pytest_plugins = ["kubecp.pytest_plugin"]`` in the top conftest.

* ``control_plane`` (session): a started :class:`kubecp.cluster.ControlPlane`:
  ``.kubeconfig`` (admin kubeconfig path), ``.server`` (URL),
  ``.api_client()`` (new ``kubernetes.client.ApiClient``), ``.kubectl(*args)``
  (the real kubectl, returns ``CompletedProcess``; raises ``KubectlError``).
* ``api_client`` (session): one shared admin ``ApiClient``.
* ``namespace`` (function): a fresh namespace name, deleted after the test.
* ``control_plane_options`` (session): the process node's :class:`NodeOptions`;
  override it in a conftest, or set the ini options ``kubecp_node_pythonpath`` /
  ``kubecp_node_env``, or the environment variable ``KUBECP_NODE_PYTHONPATH``.
  Containers get pytest's own ``pythonpath`` entries on their PYTHONPATH too.

``--kubecp-keep`` (or ``KUBECP_KEEP=1``) keeps the work directory with the
servers' and the node's logs.

If the control plane cannot be built or started, every test using it fails
with the reason (it is never skipped).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kubecp.binaries import BuildError, ensure_binaries
from kubecp.cluster import ControlPlane, NodeOptions, node_log_tail
from kubecp.images import images_root

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of the control-plane fixtures."""
    parser.addini(
        "kubecp_node_pythonpath",
        type="paths",
        default=[],
        help="extra PYTHONPATH entries for the process node's containers (besides pytest's `pythonpath`)",
    )
    parser.addini(
        "kubecp_node_env", type="linelist", default=[], help="KEY=VALUE environment for every container"
    )
    group = parser.getgroup("kubecp", "Kubernetes control plane")
    group.addoption(
        "--kubecp-keep",
        action="store_true",
        default=False,
        help="keep the control plane's work directory (logs, pod files) after the session",
    )


_build_error = pytest.StashKey[BuildError]()


def _needs_binaries(item: pytest.Item) -> bool:
    """Whether ``item`` uses the cluster: through the fixture, or itself (tests marked ``controlplane``)."""
    return (
        "control_plane" in getattr(item, "fixturenames", ())
        or item.get_closest_marker("controlplane") is not None
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries before the first test, outside any test's timeout, if a test needs them."""
    if session.config.option.collectonly:
        return
    if not any(_needs_binaries(item) for item in session.items):
        return
    try:
        ensure_binaries()
    except BuildError as error:
        # Reported by the fixture, as a failure of every test that needs the cluster.
        session.config.stash[_build_error] = error


def _node_options(config: pytest.Config) -> NodeOptions:
    root = Path(str(config.rootpath))
    paths: list[str] = []
    # Code the tests import (pytest's `pythonpath`) is what containers should import too.
    for entry in [*config.getini("pythonpath"), *config.getini("kubecp_node_pythonpath")]:
        path = Path(str(entry))
        paths.append(str(path if path.is_absolute() else root / path))
    if extra := os.environ.get("KUBECP_NODE_PYTHONPATH"):
        paths += [p for p in extra.split(os.pathsep) if p]
    env: dict[str, str] = {}
    for line in config.getini("kubecp_node_env"):
        key, sep, value = str(line).partition("=")
        if not sep:
            raise pytest.UsageError(f"kubecp_node_env: expected KEY=VALUE, got {line!r}")
        env[key.strip()] = value.strip()
    # Tests rely on volumes and termination messages at their paths: without private
    # mount namespaces they would fail obscurely, so the node refuses to start instead,
    # with the reason.
    # Images are unpacked once per digest for every session (see kubecp.pytest_images).
    return NodeOptions(
        pythonpath=list(dict.fromkeys(paths)),
        env=env,
        isolation="mount-namespace",
        image_dir=images_root() / "roots",
    )


@pytest.fixture(scope="session")
def control_plane_options(pytestconfig: pytest.Config) -> NodeOptions:
    """How the process node runs containers; override this fixture to change it."""
    return _node_options(pytestconfig)


@pytest.fixture(scope="session")
def control_plane(control_plane_options: NodeOptions, pytestconfig: pytest.Config) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager and a process node, for the whole session."""
    keep = bool(pytestconfig.getoption("kubecp_keep", default=False)) or bool(os.environ.get("KUBECP_KEEP"))
    if (build_error := pytestconfig.stash.get(_build_error, None)) is not None:
        pytest.fail(f"the Kubernetes control plane could not be built: {build_error}", pytrace=False)
    plane = ControlPlane(node=control_plane_options, keep_workdir=keep)
    # Also on an abrupt exit; the processes die with us anyway (PR_SET_PDEATHSIG).
    atexit.register(plane.stop)
    try:
        plane.start()
    except Exception as error:
        pytest.fail(f"the Kubernetes control plane could not be started: {error}", pytrace=False)
    if plane.keep_workdir:
        print(f"\nkubecp: work directory {plane.workdir} (kept)")
    try:
        yield plane
    finally:
        plane.stop()
        atexit.unregister(plane.stop)


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[ApiClient]:
    """A ``kubernetes.client.ApiClient`` authenticated as cluster admin, shared by the session."""
    with control_plane.api_client() as client:
        yield client


def namespace_name(test_name: str) -> str:
    """A valid, unique namespace name derived from a test's name."""
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:45].strip("-") or "test"
    return f"{base}-{uuid.uuid4().hex[:5]}"


@pytest.fixture
def namespace(
    control_plane: ControlPlane, api_client: ApiClient, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh namespace (its ``default`` ServiceAccount exists), deleted after the test."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    name = namespace_name(request.node.name)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"kubecp/test": "true"}))
    )
    # Pods are refused until the serviceaccount controller has made `default`.
    _wait_for(
        lambda: bool(core.list_namespaced_service_account(name, field_selector="metadata.name=default").items)
    )
    try:
        yield name
    finally:
        # Not waited for: the namespace controller and the node finish it in the background.
        with contextlib.suppress(Exception):
            core.delete_namespace(name, propagation_policy="Background")


def _wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(0.05)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """On failure of a test that used the cluster, attach the end of the process node's log."""
    report = yield
    if report.failed and "control_plane" in getattr(item, "fixturenames", ()):
        plane = item.funcargs.get("control_plane") if hasattr(item, "funcargs") else None
        if isinstance(plane, ControlPlane) and plane.logs.exists():
            report.sections.append(("kubecp node log (last lines)", node_log_tail(plane)))
    return report
