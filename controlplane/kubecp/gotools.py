"""Build the tools of the install tier (helm, a container registry) from their Go modules, once per version.

Each lands in ``~/.cache/kubestep/tools/<name>-<version>`` (``$KUBESTEP_CACHE_DIR`` moves it). Builds run
one after the other under one lock: Go builds on a small machine get slower, not faster, in parallel.
Run ``python -m kubecp.gotools`` to build them ahead.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubecp.binaries import BuildError, Log, _locked, _run_go, _stderr, cache_root, remove_stale_outputs
from kubecp.versions import VERSIONS_FILE, parse_env_file


@dataclass(frozen=True)
class GoTool:
    """A command built with ``go build`` from a published module."""

    name: str
    module: str
    """The module that is required (its version comes from versions.env)."""
    package: str
    """The main package to build."""
    version_key: str
    """The key in versions.env that pins it."""

    @property
    def version(self) -> str:
        """The pinned version."""
        return parse_env_file(VERSIONS_FILE.read_text())[self.version_key]

    def ldflags(self) -> str:
        """Linker flags: stripped, and for helm the version it would get from its own Makefile.

        Without them helm v3 believes a cluster-less `helm template`/`helm lint` targets Kubernetes v1.20,
        so charts that state a `kubeVersion` fail.
        """
        flags = ["-s", "-w"]
        if self.name == "helm":
            from kubecp.versions import pinned

            k8s = pinned()
            flags += [
                f"-X helm.sh/helm/v3/internal/version.version={self.version}",
                "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
                f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={k8s.kubernetes_major}",
                f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={k8s.kubernetes_minor}",
                f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={k8s.kubernetes_major}",
                f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={k8s.kubernetes_minor}",
            ]
        return " ".join(flags)


TOOLS: dict[str, GoTool] = {
    "helm": GoTool("helm", "helm.sh/helm/v3", "helm.sh/helm/v3/cmd/helm", "HELM_VERSION"),
    "registry": GoTool(
        "registry",
        "github.com/distribution/distribution/v3",
        "github.com/distribution/distribution/v3/cmd/registry",
        "REGISTRY_VERSION",
    ),
}


def tools_root() -> Path:
    """Directory holding the built tools."""
    return cache_root().parent / "tools"


def tool_path(name: str) -> Path:
    """Where tool ``name`` at its pinned version lives (whether or not it is built)."""
    tool = TOOLS[name]
    return tools_root() / f"{tool.name}-{tool.version}"


def ensure_tool(name: str, log: Log = _stderr) -> Path:
    """The path of tool ``name``, built first if it is not cached; safe from several processes at once."""
    target = tool_path(name)
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise BuildError(f"{name} is built from source and needs Go (1.26 or newer); `go` is not on PATH")
    with _locked(tools_root() / ".build.lock"):
        if not target.exists():
            _build(go, TOOLS[name], target, log)
    return target


def _build(go: str, tool: GoTool, target: Path, log: Log) -> None:
    build_dir = tools_root() / "build" / f"{tool.name}-{tool.version}"
    build_dir.mkdir(parents=True, exist_ok=True)
    log_file = build_dir / "build.log"
    log(f"building {tool.name} {tool.version} from its Go module (first run only; log: {log_file})")
    started = time.monotonic()
    remove_stale_outputs(build_dir)
    (build_dir / "go.mod").write_text(
        f"module kubestep.invalid/{tool.name}-build\n\ngo 1.26.0\n\nrequire {tool.module} {tool.version}\n"
    )
    with tempfile.TemporaryDirectory(dir=build_dir) as out:
        built = Path(out) / tool.name
        _run_go(
            go,
            ["build", "-trimpath", "-ldflags", tool.ldflags(), "-o", str(built), tool.package],
            build_dir,
            log_file,
        )
        os.replace(built, target)
    log(f"{tool.name} {tool.version} built in {time.monotonic() - started:.0f}s")


def main(argv: list[str] | None = None) -> None:
    """Build (or find) the named tools (default: all), one after the other, and print their paths."""
    names = (argv if argv is not None else sys.argv[1:]) or list(TOOLS)
    try:
        for name in names:
            print(ensure_tool(name))
    except BuildError as error:
        _stderr(str(error))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
