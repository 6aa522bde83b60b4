"""kubestep's runner and operator images, built from the working tree without a container daemon.

For the tests (and ``make images`` where Docker is missing), everything is made here, offline but for
package registries, and cached under ``~/.cache/kubestep/images`` (``$KUBESTEP_CACHE_DIR`` moves it):

1. the Debian base (suite, mirror and packages pinned in ``controlplane/versions.env``), made by
   ``mmdebstrap`` as a tarball and written as an OCI image layout, once per pin;
2. the wheels: kubestep's, built from the working tree, and its dependencies for the image's Python
   (downloaded once per dependency list);
3. ``runner_image/Dockerfile`` built by ``buildah`` (vfs storage, chroot isolation, ``--pull-never``,
   the base given as ``oci:<layout>``), once per content of the wheels, Dockerfile and base.

``python -m kubecp.images`` builds them (with Docker instead when a Docker engine answers, as users
would) and prints the image names.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubecp.binaries import BuildError, Log, _locked, _stderr, cache_root
from kubecp.versions import VERSIONS_FILE, parse_env_file

REPO_ROOT = VERSIONS_FILE.parent.parent
DOCKERFILE = REPO_ROOT / "runner_image" / "Dockerfile"
#: Stages of runner_image/Dockerfile that are images, and their repository names.
TARGETS = ("runner", "operator")
REPOSITORY = "kubestep"
#: OS packages the image builds need; `.ci/run` installs them.
REQUIRED_COMMANDS = {"mmdebstrap": "mmdebstrap", "buildah": "buildah"}
# Docs, manuals and translations are of no use in an image and a third of its size.
_DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def images_root() -> Path:
    """Directory holding the base layouts, wheels and buildah's storage."""
    return cache_root().parent / "images"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@dataclass(frozen=True)
class BasePin:
    """The Debian root file system the images are built on."""

    suite: str
    mirror: str
    packages: tuple[str, ...]
    python_version: str

    @classmethod
    def pinned(cls) -> BasePin:
        """The pin of versions.env."""
        values = parse_env_file(VERSIONS_FILE.read_text())
        return cls(
            suite=values["DEBIAN_SUITE"],
            mirror=values["DEBIAN_MIRROR"],
            packages=tuple(p for p in values["DEBIAN_PACKAGES"].split(",") if p),
            python_version=values["IMAGE_PYTHON_VERSION"],
        )

    @property
    def key(self) -> str:
        """Changes whenever anything that makes the base changes."""
        text = json.dumps([self.suite, self.mirror, self.packages, _DPKG_EXCLUDES, _arch()])
        return f"{self.suite}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class BaseImage:
    """An OCI image layout holding the base, as buildah's ``oci:`` transport names it."""

    layout: Path
    tag: str

    @property
    def reference(self) -> str:
        """``oci:<dir>:<tag>``, for ``FROM`` (through the BASE_IMAGE build argument)."""
        return f"oci:{self.layout}:{self.tag}"


def missing_commands() -> list[str]:
    """The OS packages the image builds need that are not installed."""
    return [package for command, package in REQUIRED_COMMANDS.items() if shutil.which(command) is None]


def _require_commands() -> None:
    missing = missing_commands()
    if missing:
        raise BuildError(
            f"building the images needs {', '.join(missing)} (Debian/Ubuntu: "
            f"`apt-get install -y {' '.join(missing)}`; `.ci/run` installs them)"
        )


def _run(args: Sequence[str], log_file: Path, what: str, **kwargs: object) -> str:
    with log_file.open("a") as handle:
        handle.write(f"$ {' '.join(args)}\n")
        handle.flush()
        result = subprocess.run(
            list(args), stdout=subprocess.PIPE, stderr=handle, text=True, check=False, **kwargs
        )  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise BuildError(f"{what} failed (exit {result.returncode}); log {log_file}:\n{tail}")
    return str(result.stdout)


# -- the Debian base -------------------------------------------------------------------


def ensure_base(pin: BasePin | None = None, log: Log = _stderr) -> BaseImage:
    """The base image's OCI layout, made by mmdebstrap first if it is not cached."""
    pin = pin or BasePin.pinned()
    directory = images_root() / "base" / pin.key
    base = BaseImage(directory / "oci", pin.suite)
    if (base.layout / "index.json").exists():
        return base
    _require_commands()
    with _locked(images_root() / ".base.lock"):
        if (base.layout / "index.json").exists():
            return base
        directory.mkdir(parents=True, exist_ok=True)
        log_file = directory / "build.log"
        log(
            f"making the Debian {pin.suite} base image with mmdebstrap "
            f"(first run only; about a minute; log: {log_file})"
        )
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            tarball = Path(scratch) / "rootfs.tar"
            _run(
                [
                    "mmdebstrap",
                    "--variant=essential",
                    f"--include={','.join(pin.packages)}",
                    *(f"--dpkgopt=path-exclude={pattern}" for pattern in _DPKG_EXCLUDES),
                    # Licences stay.
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    pin.suite,
                    str(tarball),
                    pin.mirror,
                ],
                log_file,
                "mmdebstrap",
            )
            layout = Path(scratch) / "oci"
            write_oci_layout(
                tarball,
                layout,
                pin.suite,
                env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            )
            os.replace(layout, base.layout)
        log(f"base image {pin.key} made in {time.monotonic() - started:.0f}s")
    return base


def _blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_oci_layout(rootfs_tar: Path, layout: Path, tag: str, env: Sequence[str] = ()) -> str:
    """Write an OCI image layout of one layer (``rootfs_tar``) tagged ``tag``; return the manifest digest."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    diff = hashlib.sha256()
    compressed = layout / "blobs" / "layer.tmp"
    # mtime 0: the same tarball gives the same blob.
    with (
        rootfs_tar.open("rb") as source,
        compressed.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as target,
    ):
        while chunk := source.read(1 << 20):
            diff.update(chunk)
            target.write(chunk)
    layer_digest = "sha256:" + _file_sha256(compressed)
    os.replace(compressed, layout / "blobs" / "sha256" / layer_digest.split(":", 1)[1])
    config = {
        "architecture": _arch(),
        "os": "linux",
        "config": {"Env": list(env)},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff.hexdigest()]},
        "history": [{"created_by": f"mmdebstrap {tag}"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": _OCI_MANIFEST,
        "config": {
            "mediaType": _OCI_CONFIG,
            "digest": _blob(layout, config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": _OCI_LAYER_GZIP,
                "digest": layer_digest,
                "size": (layout / "blobs" / "sha256" / layer_digest.split(":", 1)[1]).stat().st_size,
            }
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = _blob(layout, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": _OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps(index))
    return manifest_digest


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- wheels ----------------------------------------------------------------------------


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    return sorted(
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )


def build_wheels(destination: Path, python_version: str | None = None, log: Log = _stderr) -> Path:
    """Fill ``destination`` with kubestep's wheel (from the working tree) and its dependencies' wheels.

    The dependencies are downloaded for the image's Python and this machine's architecture (binary
    wheels only, so the image build needs no compiler and no network), once per dependency list;
    later calls copy them from the cache. Returns kubestep's wheel.
    """
    python_version = python_version or BasePin.pinned().python_version
    destination.mkdir(parents=True, exist_ok=True)
    for old in destination.glob("*.whl"):
        old.unlink()
    work = images_root() / "wheels"
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "build.log"
    wheel = _kubestep_wheel(work, log_file)
    requirements = _requirements(wheel)
    key = hashlib.sha256(json.dumps([requirements, python_version, platform.machine()]).encode()).hexdigest()
    dependencies = work / f"deps-{key[:16]}"
    if not dependencies.is_dir():
        with _locked(work / ".deps.lock"):
            if not dependencies.is_dir():
                _download_dependencies(wheel, python_version, dependencies, log_file, log)
    for path in dependencies.glob("*.whl"):
        shutil.copy2(path, destination / path.name)
    target = destination / wheel.name
    shutil.copy2(wheel, target)
    return target


def _source_fingerprint() -> str:
    """What kubestep's wheel is made of: the package's files, pyproject.toml and the README."""
    digest = hashlib.sha256()
    package = REPO_ROOT / "operator" / "kubestep"
    paths = [REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md"]
    paths += sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in paths:
        digest.update(f"{path.relative_to(REPO_ROOT)}\0{_file_sha256(path)}\n".encode())
    return digest.hexdigest()[:16]


def _kubestep_wheel(work: Path, log_file: Path) -> Path:
    """kubestep's wheel of the working tree, built once per content (building needs PyPI for hatchling)."""
    built = work / f"kubestep-{_source_fingerprint()}"
    if not built.is_dir():
        with tempfile.TemporaryDirectory(dir=work) as scratch:
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--quiet",
                    "--no-deps",
                    "--wheel-dir",
                    scratch,
                    str(REPO_ROOT),
                ],
                log_file,
                "building kubestep's wheel",
            )
            with contextlib.suppress(OSError):
                # Another process made the same one meanwhile: either will do.
                os.replace(scratch, built)
        for old in work.glob("kubestep-*"):
            if old != built and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    (wheel,) = built.glob("kubestep-*.whl")
    return wheel


def _download_dependencies(wheel: Path, python_version: str, target: Path, log_file: Path, log: Log) -> None:
    log(f"downloading kubestep's dependencies for Python {python_version} (once per dependency list)")
    machine = platform.machine()
    # pip takes a platform tag literally: list every manylinux level a current glibc accepts.
    platforms = [f"--platform=manylinux_2_{minor}_{machine}" for minor in range(5, 40)]
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                f"--python-version={python_version}",
                "--implementation=cp",
                *platforms,
                "--dest",
                scratch,
                str(wheel),
            ],
            log_file,
            "downloading the dependencies' wheels",
        )
        Path(scratch, wheel.name).unlink(missing_ok=True)
        os.replace(scratch, target)


# -- buildah -----------------------------------------------------------------------------


class Buildah:
    """buildah with its own storage (vfs) in the cache and chroot isolation: no daemon, no root setup."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or images_root() / "buildah"
        self.log_file = self.root / "build.log"

    def command(self, *args: str) -> list[str]:
        """The buildah command line for ``args``."""
        return [
            "buildah",
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def run(self, *args: str, what: str = "buildah", cwd: Path | None = None) -> str:
        """Run buildah; its output, or a BuildError with the end of the log."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
        return _run(self.command(*args), self.log_file, what, env=env, cwd=cwd)

    def exists(self, image: str) -> bool:
        """Whether ``image`` is in the store."""
        result = subprocess.run(
            self.command("inspect", "--type", "image", "--format", "{{.FromImageID}}", image),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def push(self, image: str, destination: str) -> None:
        """Push ``image`` to ``destination`` (``host:port/repo:tag``) over plain HTTP."""
        self.run(
            "push", "--tls-verify=false", "--quiet", image, f"docker://{destination}", what=f"pushing {image}"
        )


@dataclass(frozen=True)
class ProjectImages:
    """kubestep's images in buildah's store (``localhost/kubestep/<target>:<tag>``)."""

    tag: str
    buildah: Buildah

    def name(self, target: str) -> str:
        """The local name of ``target`` (``runner`` or ``operator``)."""
        return f"localhost/{REPOSITORY}/{target}:{self.tag}"

    def push(self, registry: str) -> dict[str, str]:
        """Push every image to ``registry`` (``host:port``); their references there by target."""
        pushed = {}
        for target in TARGETS:
            reference = f"{registry}/{REPOSITORY}/{target}:{self.tag}"
            self.buildah.push(self.name(target), reference)
            pushed[target] = reference
        return pushed


def ensure_images(log: Log = _stderr) -> ProjectImages:
    """The runner and operator images of the working tree, built with buildah unless cached."""
    _require_commands()
    base = ensure_base(log=log)
    buildah = Buildah()
    context = images_root() / "context"
    with _locked(images_root() / ".build.lock"):
        build_wheels(context, log=log)
        tag = _content_tag(context, base)
        images = ProjectImages(tag, buildah)
        if all(buildah.exists(images.name(target)) for target in TARGETS):
            return images
        log(f"building the runner and operator images with buildah (log: {buildah.log_file})")
        started = time.monotonic()
        base_name = f"localhost/{REPOSITORY}/base:{base.layout.parent.name}"
        if not buildah.exists(base_name):
            # --pull-never takes names of the store only: the layout is copied in first. A relative
            # path, since buildah names the image after it and `.cache` is no valid name component.
            image_id = buildah.run(
                "pull",
                "--quiet",
                f"oci:{base.layout.name}:{base.tag}",
                what="importing the base",
                cwd=base.layout.parent,
            ).strip()
            buildah.run("tag", image_id, base_name, what="naming the base")
            buildah.run("rmi", f"localhost/{base.layout.name}:latest", what="dropping the import's name")
        for target in TARGETS:
            buildah.run(
                "build",
                "--quiet",
                "--pull-never",
                "--layers",
                "--isolation",
                "chroot",
                "--build-arg",
                f"BASE_IMAGE={base_name}",
                "--file",
                str(DOCKERFILE),
                "--target",
                target,
                "--tag",
                images.name(target),
                str(context),
                what=f"building the {target} image",
            )
        log(f"images {tag} built in {time.monotonic() - started:.0f}s")
        _prune(buildah, [f"{REPOSITORY}/{target}" for target in TARGETS])
    return images


def ensure_image_from_runner(
    repository: str, dockerfile: Path, context: Path, images: ProjectImages, log: Log = _stderr
) -> str:
    """A user's image built ``FROM`` the runner image (build argument ``RUNNER_IMAGE``), unless cached.

    Like ``examples/contacts/Dockerfile``. Returns its local name, tagged by the content of the
    Dockerfile, the build context and the runner image.
    """
    digest = hashlib.sha256(f"{images.tag}\n".encode())
    digest.update(dockerfile.read_bytes())
    for path in sorted(context.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and ".demo" not in path.parts:
            digest.update(str(path.relative_to(context)).encode())
            digest.update(_file_sha256(path).encode())
    name = f"localhost/{repository}:{digest.hexdigest()[:16]}"
    buildah = images.buildah
    with _locked(images_root() / ".build.lock"):
        if buildah.exists(name):
            return name
        log(f"building {repository} from {dockerfile} with buildah")
        started = time.monotonic()
        buildah.run(
            "build",
            "--quiet",
            "--pull-never",
            "--isolation",
            "chroot",
            "--build-arg",
            f"RUNNER_IMAGE={images.name('runner')}",
            "--file",
            str(dockerfile),
            "--tag",
            name,
            str(context),
            what=f"building {repository}",
        )
        log(f"{name} built in {time.monotonic() - started:.0f}s")
        _prune(buildah, [repository])
    return name


def _content_tag(context: Path, base: BaseImage) -> str:
    """A tag that changes with anything the images are made of: wheels, Dockerfile, base."""
    digest = hashlib.sha256()
    digest.update(DOCKERFILE.read_bytes())
    digest.update((base.layout / "index.json").read_bytes())
    for wheel in sorted(context.glob("*.whl")):
        digest.update(wheel.name.encode())
        if wheel.name.startswith("kubestep-"):
            digest.update(_code_fingerprint(wheel).encode())
    # The dependencies' wheels are releases from PyPI: their names (with versions) say it all.
    return digest.hexdigest()[:16]


def _code_fingerprint(wheel: Path) -> str:
    """kubestep's code in its wheel: every file but the metadata, which carries the whole README.

    Editing the README alone must not rebuild the images; a changed dependency list changes the
    dependencies' wheels instead.
    """
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.filename.endswith((".dist-info/METADATA", ".dist-info/RECORD")):
                continue
            digest.update(f"{info.filename}\0{info.CRC}\0{info.file_size}\n".encode())
    return digest.hexdigest()


#: Builds of an image kept besides the newest: sessions of other working trees may still push them.
KEEP_BUILDS = 1


def _prune(buildah: Buildah, repositories: Sequence[str]) -> None:
    """Drop all but the newest builds of ``repositories`` (vfs keeps a full copy of every layer)."""
    listing = json.loads(buildah.run("images", "--json", what="listing images") or "[]")
    for repository in repositories:
        builds = sorted(
            (
                (str(image.get("createdatraw", "")), name)
                for image in listing
                for name in image.get("names") or []
                if name.startswith(f"localhost/{repository}:")
            ),
            reverse=True,
        )
        for _, name in builds[1 + KEEP_BUILDS :]:
            with contextlib.suppress(BuildError):
                buildah.run("rmi", name, what=f"removing {name}")
    with contextlib.suppress(BuildError):
        buildah.run("rmi", "--prune", what="pruning dangling images")


# -- the command line: `make images` ----------------------------------------------------------


def docker_works() -> bool:
    """Whether a Docker engine answers."""
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    return result.returncode == 0


def build_with_docker(tag: str, log: Log = _stderr) -> list[str]:
    """Build the images with Docker from the public base image; their names."""
    context = REPO_ROOT / "build" / "wheels"
    build_wheels(context, log=log)
    names = []
    for target in TARGETS:
        name = f"{REPOSITORY}/{target}:{tag}"
        subprocess.run(
            ["docker", "build", "--file", str(DOCKERFILE), "--target", target, "--tag", name, str(context)],
            check=True,
        )
        names.append(name)
    return names


def main(argv: Sequence[str] | None = None) -> None:
    """Build the images (Docker if it answers, else buildah) and print their names."""
    parser = argparse.ArgumentParser(prog="python -m kubecp.images", description=main.__doc__)
    parser.add_argument(
        "--builder",
        choices=["auto", "docker", "buildah"],
        default="auto",
        help="default: docker if it answers",
    )
    parser.add_argument(
        "--tag", default="dev", help="tag of the images (with buildah, besides their content hash)"
    )
    args = parser.parse_args(argv)
    builder = args.builder
    if builder == "auto":
        builder = "docker" if docker_works() else "buildah"
    try:
        if builder == "docker":
            names = build_with_docker(args.tag)
        else:
            images = ensure_images()
            names = []
            for target in TARGETS:
                # A stable name besides the content hash, as Docker users get.
                name = f"localhost/{REPOSITORY}/{target}:{args.tag}"
                images.buildah.run("tag", images.name(target), name, what=f"tagging {name}")
                names.append(name)
            storage = images.buildah.root / "storage"
            _stderr(f"in buildah's store: buildah --root {storage} --storage-driver vfs images")
    except (BuildError, subprocess.CalledProcessError) as error:
        _stderr(str(error))
        raise SystemExit(1) from None
    for name in names:
        print(name)


if __name__ == "__main__":
    main()
