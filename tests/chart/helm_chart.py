"""The real ``helm`` with its homes in a scratch directory, and where the chart lives."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kubecp.loopback import no_proxy_env

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubestep"


class HelmError(subprocess.CalledProcessError):
    """helm exited with an error; its output is in the message."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd[1:]))} failed ({self.returncode}):\n{self.stderr}{self.stdout}"


class Helm:
    """The real helm with its cache, config and data in a scratch directory."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.home = home
        self.kubeconfig = kubeconfig

    def with_kubeconfig(self, kubeconfig: Path) -> Helm:
        """The same helm, talking to the cluster of ``kubeconfig``."""
        return Helm(self.binary, self.home, kubeconfig)

    def run(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run helm; raise :class:`HelmError` when it fails and ``check`` is set."""
        env = {
            **no_proxy_env(os.environ),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        argv = [str(self.binary), *args]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise HelmError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def template(self, *sets: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The chart rendered (``helm template``) with ``values``, as a list of objects."""
        args = ["template", "kubestep", str(CHART), "--namespace", "kubestep-system"]
        if values is not None:
            path = self.home / "values.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["--values", str(path)]
        args += [arg for s in sets for arg in ("--set", s)]
        text = self.run(*args).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]
