"""The pinned versions, read from ``controlplane/versions.env`` (the only place they are written)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

VERSIONS_FILE = Path(__file__).resolve().parent.parent / "versions.env"


@dataclass(frozen=True)
class Versions:
    """Versions of the control-plane components."""

    kubernetes: str
    etcd: str

    @property
    def kubernetes_major(self) -> str:
        """Major version, e.g. ``"1"`` for ``v1.37.2``."""
        return self.kubernetes.lstrip("v").split(".")[0]

    @property
    def kubernetes_minor(self) -> str:
        """Minor version, e.g. ``"37"`` for ``v1.37.2``."""
        return self.kubernetes.lstrip("v").split(".")[1]

    @property
    def staging(self) -> str:
        """Version of the ``k8s.io/*`` staging modules (``v0.37.2`` for ``v1.37.2``)."""
        return "v0." + self.kubernetes.lstrip("v").split(".", 1)[1]


def parse_env_file(text: str) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines, ignoring blank lines and ``#`` comments."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{VERSIONS_FILE}: not KEY=VALUE: {raw!r}")
        values[key.strip()] = value.strip().strip("\"'")
    return values


@functools.cache
def pinned() -> Versions:
    """The versions pinned in ``versions.env``."""
    values = parse_env_file(VERSIONS_FILE.read_text())
    return Versions(kubernetes=values["KUBERNETES_VERSION"], etcd=values["ETCD_VERSION"])
