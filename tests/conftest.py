"""Test-suite wide setup: the real control plane's fixtures (see controlplane/README.md)."""

pytest_plugins = ["kubecp.pytest_plugin"]
