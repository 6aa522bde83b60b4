"""Build etcd, kube-apiserver and kube-controller-manager from their Go modules, once per version.

The binaries land in ``~/.cache/kubestep/controlplane/<kubernetes version>/``
(``$KUBESTEP_CACHE_DIR`` or ``$XDG_CACHE_HOME`` move it), so only the first
run pays for the build. Run ``python -m kubecp.binaries`` to build them ahead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kubecp.versions import Versions, pinned

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """The binaries could not be built."""


@dataclass(frozen=True)
class Binaries:
    """Paths of the control-plane executables."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path

    def all(self) -> list[Path]:
        """Every executable."""
        return [self.etcd, self.kube_apiserver, self.kube_controller_manager]


def _stderr(message: str) -> None:
    print(f"kubecp: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """Directory holding the cached binaries of every version."""
    if override := os.environ.get("KUBESTEP_CACHE_DIR"):
        return Path(override).expanduser() / "controlplane"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kubestep" / "controlplane"


def binaries_for(versions: Versions) -> Binaries:
    """Where the binaries of ``versions`` live (whether or not they are built)."""
    directory = cache_root() / versions.kubernetes
    return Binaries(
        # etcd has its own version, so it is part of the file name: changing
        # only ETCD_VERSION must not reuse a stale etcd.
        etcd=directory / f"etcd-{versions.etcd}",
        kube_apiserver=directory / "kube-apiserver",
        kube_controller_manager=directory / "kube-controller-manager",
    )


def ensure_binaries(versions: Versions | None = None, log: Log = _stderr) -> Binaries:
    """Return the binaries of ``versions`` (default: the pinned ones), building what is missing.

    Safe to call from several processes at once: a file lock makes the later
    callers wait for the first build and then reuse it.
    """
    versions = versions or pinned()
    binaries = binaries_for(versions)
    if all(path.exists() for path in binaries.all()):
        return binaries
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "the control plane is built from source and needs Go (https://go.dev/dl/, "
            "1.26 or newer); `go` is not on PATH"
        )
    binaries.kube_apiserver.parent.mkdir(parents=True, exist_ok=True)
    with _locked(cache_root() / ".build.lock"):
        if not (binaries.kube_apiserver.exists() and binaries.kube_controller_manager.exists()):
            _build_kubernetes(go, versions, binaries, log)
        if not binaries.etcd.exists():
            _build_etcd(go, versions, binaries, log)
    return binaries


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go_env(build_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CGO_ENABLED="0",
        # Our generated module must not be captured by a go.work of the caller,
        # and -mod=mod lets `go build` write the go.sum it needs. The caller's GOFLAGS
        # (e.g. -p=1 on a small machine) still apply; ours come last, so they win.
        GOWORK="off",
        GOFLAGS=" ".join(filter(None, [env.get("GOFLAGS", "").strip(), "-mod=mod"])),
    )
    env.setdefault("GOTOOLCHAIN", "auto")
    return env


def remove_stale_outputs(build_dir: Path) -> None:
    """Remove output directories an interrupted build left in ``build_dir``.

    Called under the build lock, so no other build is using them.
    """
    for entry in build_dir.glob("tmp*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _run_go(go: str, args: list[str], build_dir: Path, log_file: Path) -> str:
    with log_file.open("a") as log_handle:
        log_handle.write(f"$ go {' '.join(args)}\n")
        log_handle.flush()
        result = subprocess.run(
            [go, *args],
            cwd=build_dir,
            env=_go_env(build_dir),
            stdout=subprocess.PIPE,
            stderr=log_handle,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-40:])
        raise BuildError(f"`go {' '.join(args)}` failed (exit {result.returncode}); log {log_file}:\n{tail}")
    return result.stdout


def _module_info(go: str, module: str, build_dir: Path, log_file: Path) -> dict[str, object]:
    info = json.loads(_run_go(go, ["mod", "download", "-json", module], build_dir, log_file))
    if not isinstance(info, dict) or "GoMod" not in info:
        raise BuildError(f"`go mod download -json {module}` gave no go.mod: {info!r}")
    return info


def staging_modules(published_go_mod: str) -> list[str]:
    """The ``k8s.io/*`` modules that k8s.io/kubernetes requires at the placeholder ``v0.0.0``.

    Its published go.mod points them at ``./staging/...`` through ``replace``
    directives, which do not apply to a module that depends on it.
    """
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) v0\.0\.0\s*$", published_go_mod, re.MULTILINE)))


def kubernetes_go_mod(versions: Versions, published_go_mod: str) -> str:
    """go.mod of the throwaway module that builds kube-apiserver and kube-controller-manager."""
    replaces = "\n".join(
        f"\t{module} => {module} {versions.staging}" for module in staging_modules(published_go_mod)
    )
    go_line = re.search(r"^go (\S+)$", published_go_mod, re.MULTILINE)
    godebug = re.search(r"^godebug .*$", published_go_mod, re.MULTILINE)
    return (
        "module kubestep.invalid/controlplane-build\n\n"
        f"go {go_line.group(1) if go_line else '1.26.0'}\n\n"
        + (f"{godebug.group(0)}\n\n" if godebug else "")
        + f"require k8s.io/kubernetes {versions.kubernetes}\n\n"
        f"replace (\n{replaces}\n)\n"
    )


def version_ldflags(versions: Versions, git_commit: str) -> str:
    """The ``-X`` flags hack/lib/version.sh sets, so the servers report the pinned version."""
    values = {
        "gitVersion": versions.kubernetes,
        "gitMajor": versions.kubernetes_major,
        "gitMinor": versions.kubernetes_minor,
        "gitCommit": git_commit,
        "gitTreeState": "clean",
        "buildDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items() if value]
    return " ".join(flags)


def _build_kubernetes(go: str, versions: Versions, binaries: Binaries, log: Log) -> None:
    build_dir = cache_root() / "build" / f"kubernetes-{versions.kubernetes}"
    build_dir.mkdir(parents=True, exist_ok=True)
    log_file = build_dir / "build.log"
    log(
        f"building kube-apiserver and kube-controller-manager {versions.kubernetes} from source "
        f"(first run only; several minutes; log: {log_file})"
    )
    started = time.monotonic()
    remove_stale_outputs(build_dir)
    (build_dir / "go.mod").write_text("module kubestep.invalid/probe\n\ngo 1.26.0\n")
    info = _module_info(go, f"k8s.io/kubernetes@{versions.kubernetes}", build_dir, log_file)
    published = Path(str(info["GoMod"])).read_text()
    origin = info.get("Origin")
    commit = str(origin.get("Hash", "")) if isinstance(origin, dict) else ""
    (build_dir / "go.mod").write_text(kubernetes_go_mod(versions, published))
    with tempfile.TemporaryDirectory(dir=build_dir) as out:
        _run_go(
            go,
            [
                "build",
                "-trimpath",
                "-ldflags",
                version_ldflags(versions, commit),
                "-o",
                out + "/",
                # One invocation for both: they share most packages.
                "k8s.io/kubernetes/cmd/kube-apiserver",
                "k8s.io/kubernetes/cmd/kube-controller-manager",
            ],
            build_dir,
            log_file,
        )
        os.replace(Path(out) / "kube-controller-manager", binaries.kube_controller_manager)
        os.replace(Path(out) / "kube-apiserver", binaries.kube_apiserver)
    _record_build_time(binaries, "kubernetes", versions.kubernetes, time.monotonic() - started, log)


def _build_etcd(go: str, versions: Versions, binaries: Binaries, log: Log) -> None:
    build_dir = cache_root() / "build" / f"etcd-{versions.etcd}"
    build_dir.mkdir(parents=True, exist_ok=True)
    log_file = build_dir / "build.log"
    log(f"building etcd {versions.etcd} from source (first run only; log: {log_file})")
    started = time.monotonic()
    remove_stale_outputs(build_dir)
    (build_dir / "go.mod").write_text(
        "module kubestep.invalid/etcd-build\n\ngo 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 {versions.etcd}\n"
    )
    with tempfile.TemporaryDirectory(dir=build_dir) as out:
        target = Path(out) / "etcd"
        # server/v3's main package is the etcd server entry point.
        _run_go(
            go,
            ["build", "-trimpath", "-ldflags", "-s -w", "-o", str(target), "go.etcd.io/etcd/server/v3"],
            build_dir,
            log_file,
        )
        os.replace(target, binaries.etcd)
    _record_build_time(binaries, "etcd", versions.etcd, time.monotonic() - started, log)


def _record_build_time(binaries: Binaries, what: str, version: str, seconds: float, log: Log) -> None:
    line = f"{datetime.now(UTC).isoformat(timespec='seconds')} {what} {version} built in {seconds:.0f}s\n"
    with (binaries.kube_apiserver.parent / "build-times.txt").open("a") as handle:
        handle.write(line)
    log(line.strip())


def main() -> None:
    """Build (or find) the binaries and print their paths."""
    try:
        binaries = ensure_binaries()
    except BuildError as error:
        _stderr(str(error))
        raise SystemExit(1) from None
    for path in binaries.all():
        print(path)


if __name__ == "__main__":
    main()
