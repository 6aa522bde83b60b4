"""Test-suite wide setup: the real control plane's fixtures (see controlplane/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubecp.cluster import ControlPlane

pytest_plugins = ["kubecp.pytest_plugin", "kubecp.pytest_images"]

CRDS = Path(__file__).resolve().parents[1] / "crds"


@pytest.fixture(scope="session")
def kubestep_crds(control_plane: ControlPlane) -> ControlPlane:
    """The control plane with kubestep's generated CRDs installed and Established."""
    control_plane.kubectl("apply", "-f", str(CRDS))
    for path in sorted(CRDS.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return control_plane
