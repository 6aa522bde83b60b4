"""Images of a registry on loopback: pulled over the registry API, unpacked once per digest.

Only references whose registry is ``127.0.0.1:<port>``, ``localhost:<port>`` or ``[::1]:<port>`` are
images here; the process node runs every other container in its own Python environment (see
environment.ImageStandIn). Such a registry speaks plain HTTP (as ``registry serve`` does without TLS).

An image's layers are applied in order into one root file system (``<store>/roots/<digest>``), with
their whiteouts, owners and modes as they are in the layers (``/tmp`` stays 1777), and never
changed afterwards: each container runs on an overlay of it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_ACCEPT = ", ".join((*_MANIFEST_TYPES, *_INDEX_TYPES))
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_REQUEST_TIMEOUT = 30.0
#: Unpacked roots (~400 MB each) unused for this long are removed when a store opens; in a cache shared
#: by several nodes, a root that a running container still uses was touched when that container started.
UNUSED_ROOT_SECONDS = 6 * 3600.0


class PullError(Exception):
    """The image cannot be pulled (kubelet: ErrImagePull); the message says why, as a runtime would."""


class NotPresentError(Exception):
    """The image is not on the node and its pull policy is Never (kubelet: ErrImageNeverPull)."""


@dataclass(frozen=True)
class Reference:
    """An image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, image: str) -> Reference | None:
        """The reference, if ``image`` names a loopback registry with a port; else None."""
        registry, slash, rest = image.partition("/")
        host = registry.rsplit(":", 1)[0] if ":" in registry else registry
        if not slash or host not in _LOOPBACK_HOSTS or ":" not in registry.replace("[::1]", ""):
            return None
        rest, _, digest = rest.partition("@")
        repository, _, tag = rest.partition(":")
        if not re.fullmatch(r"[a-z0-9]+(?:[._/-]+[a-z0-9]+)*", repository):
            return None
        return cls(registry, repository, tag or (None if digest else "latest"), digest or None)

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return (
            f"{self.registry}/{self.repository}"
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )


@dataclass(frozen=True)
class ImageConfig:
    """What the image says about running it (the ``config`` of its OCI configuration)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ImageConfig:
        """From an image configuration blob."""
        config = document.get("config") or {}
        return cls(
            entrypoint=list(config.get("Entrypoint") or []),
            cmd=list(config.get("Cmd") or []),
            env=list(config.get("Env") or []),
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
        )

    def environment(self) -> dict[str, str]:
        """The image's environment as a mapping (later entries win)."""
        environment = {}
        for entry in self.env:
            key, _, value = entry.partition("=")
            environment[key] = value
        return environment


@dataclass(frozen=True)
class Image:
    """An image ready to run: its unpacked root file system and configuration."""

    reference: str
    #: As the kubelet reports it: ``<registry>/<repository>@sha256:...``.
    image_id: str
    rootfs: Path
    config: ImageConfig


def is_loopback_image(image: str) -> bool:
    """Whether ``image`` is served by a registry on this machine (and so is run as an image)."""
    return Reference.parse(image) is not None


def _machine_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class ImageStore:
    """Pulled images of one node: what its references resolved to, and the unpacked roots.

    The roots (``roots``, default ``<root>/roots``) may be shared by several nodes, e.g. a cache
    kept across runs: one directory per digest, written once by an atomic rename.
    """

    def __init__(self, root: Path, roots: Path | None = None) -> None:
        self.root = root
        self.roots = roots or root / "roots"
        self._lock = threading.Lock()
        self._digest_locks: dict[str, threading.Lock] = {}
        self._prune()

    def _prune(self) -> None:
        """Remove roots no container has started from for a long time (and leftovers of failed pulls)."""
        roots = self.roots
        if not roots.is_dir():
            return
        cutoff = time.time() - UNUSED_ROOT_SECONDS
        for entry in roots.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)

    def _used(self, root: Path) -> Path:
        """Mark ``root`` as used now (see _prune); return its file system."""
        with contextlib.suppress(OSError):
            os.utime(root)
        return root / "rootfs"

    def _reference_file(self, reference: Reference) -> Path:
        name = hashlib.sha256(str(reference).encode()).hexdigest()
        return self.root / "references" / f"{name}.json"

    def _root_dir(self, digest: str) -> Path:
        return self.roots / digest.replace(":", "-")

    def present(self, image: str) -> Image | None:
        """The image, if this node has it."""
        reference = Reference.parse(image)
        if reference is None:
            raise ValueError(f"{image!r} is not an image of a loopback registry")
        try:
            recorded = json.loads(self._reference_file(reference).read_text())
        except (OSError, ValueError):
            return None
        root = self._root_dir(recorded["digest"])
        if not (root / "rootfs").is_dir():
            return None
        return Image(
            image,
            recorded["image_id"],
            self._used(root),
            ImageConfig.from_json(json.loads((root / "config.json").read_text())),
        )

    def get(self, image: str, policy: str) -> tuple[Image, bool]:
        """The image, pulled as ``policy`` (Always, IfNotPresent, Never) says; and whether it was pulled.

        Raises PullError or NotPresentError.
        """
        if policy != "Always":
            found = self.present(image)
            if found is not None:
                return found, False
            if policy == "Never":
                raise NotPresentError(f'Container image "{image}" is not present with pull policy of Never')
        return self.pull(image), True

    def pull(self, image: str) -> Image:
        """Ask the registry for the image's manifest; fetch and unpack it unless this digest is here."""
        reference = Reference.parse(image)
        if reference is None:
            raise ValueError(f"{image!r} is not an image of a loopback registry")
        try:
            digest, manifest, top_digest = self._resolve(reference)
            image_id = f"{reference.registry}/{reference.repository}@{top_digest}"
            root = self._root_dir(digest)
            with self._lock:
                digest_lock = self._digest_locks.setdefault(digest, threading.Lock())
            with digest_lock:
                if not (root / "rootfs").is_dir():
                    self._unpack(reference, manifest, root)
        except PullError as error:
            raise PullError(f'failed to pull and unpack image "{image}": {error}') from None
        except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as error:
            # A broken or hostile image (a layer writing through a link out of the root), a full disk.
            raise PullError(f'failed to pull and unpack image "{image}": {error}') from error
        recorded = self._reference_file(reference)
        recorded.parent.mkdir(parents=True, exist_ok=True)
        staging = recorded.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        staging.write_text(json.dumps({"digest": digest, "image_id": image_id}))
        os.replace(staging, recorded)
        config = ImageConfig.from_json(json.loads((root / "config.json").read_text()))
        return Image(image, image_id, self._used(root), config)

    # -- the registry API ------------------------------------------------------------------

    def _get(self, reference: Reference, path: str, accept: str | None = None) -> Any:
        url = f"http://{reference.registry}/v2/{reference.repository}/{path}"
        request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
        try:
            return urllib.request.urlopen(request, timeout=_REQUEST_TIMEOUT)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise PullError(
                    f'failed to resolve reference "{reference}": {reference}: not found'
                ) from None
            raise PullError(
                f"unexpected status from GET request to {url}: {error.code} {error.reason}"
            ) from None
        except (OSError, urllib.error.URLError) as error:
            reason = getattr(error, "reason", error)
            raise PullError(f'failed to do request: Get "{url}": {reason}') from None

    def _manifest(self, reference: Reference, ref: str) -> tuple[dict[str, Any], str, str]:
        with self._get(reference, f"manifests/{ref}", _ACCEPT) as response:
            body = response.read()
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        document = json.loads(body)
        return document, media_type or str(document.get("mediaType", "")), digest

    def _resolve(self, reference: Reference) -> tuple[str, dict[str, Any], str]:
        """The digest and document of the manifest for this machine, and the digest the reference names."""
        document, media_type, top_digest = self._manifest(reference, reference.manifest_ref)
        if media_type in _INDEX_TYPES or "manifests" in document:
            arch = _machine_arch()
            for entry in document.get("manifests") or []:
                entry_platform = entry.get("platform") or {}
                if entry_platform.get("os") == "linux" and entry_platform.get("architecture") == arch:
                    manifest, _, digest = self._manifest(reference, entry["digest"])
                    return digest, manifest, top_digest
            raise PullError(f"no match for platform in manifest {top_digest}: not found")
        return top_digest, document, top_digest

    def _blob(self, reference: Reference, descriptor: dict[str, Any], target: Path) -> None:
        expected = str(descriptor["digest"])
        digest = hashlib.sha256()
        with self._get(reference, f"blobs/{expected}") as response, target.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if "sha256:" + digest.hexdigest() != expected:
            raise PullError(f"failed commit on ref {expected}: unexpected commit digest")

    # -- unpacking -------------------------------------------------------------------------

    def _unpack(self, reference: Reference, manifest: dict[str, Any], root: Path) -> None:
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=root.parent) as scratch:
            work = Path(scratch)
            config_file = work / "config.json"
            self._blob(reference, manifest["config"], config_file)
            rootfs = work / "rootfs"
            rootfs.mkdir()
            for index, layer in enumerate(manifest.get("layers") or []):
                blob = work / f"layer{index}"
                self._blob(reference, layer, blob)
                with _open_layer(blob, str(layer.get("mediaType", ""))) as stream:
                    apply_layer(stream, rootfs)
                blob.unlink()
            # An image's root directory is 0755 whatever the temporary directory's mode was.
            rootfs.chmod(0o755)
            staged = work / "image"
            staged.mkdir()
            os.replace(config_file, staged / "config.json")
            os.replace(rootfs, staged / "rootfs")
            try:
                os.replace(staged, root)
            except OSError:
                # Another node process unpacked the same digest meanwhile: theirs is as good.
                if not (root / "rootfs").is_dir():
                    raise


@contextlib.contextmanager
def _open_layer(blob: Path, media_type: str) -> Iterator[IO[bytes]]:
    if "zstd" in media_type:
        raise PullError(f"layer media type {media_type} is not supported by the process node")
    with blob.open("rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw) as stream:
                yield stream  # type: ignore[misc]
        else:
            yield raw


def _inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` if its parent directory really is inside ``root`` (no link leads out)."""
    path = root / relative
    parent = os.path.realpath(path.parent)
    if parent != str(root) and not parent.startswith(str(root) + os.sep):
        return None
    return Path(parent) / path.name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _keep_modes(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
    """tarfile's ``tar`` filter (no absolute or escaping paths), but with the modes as they are.

    That filter clears setuid, setgid and sticky bits, and an image's /tmp must stay 1777.
    """
    checked = tarfile.tar_filter(member, destination)
    return checked.replace(mode=member.mode, deep=False)


def apply_layer(stream: IO[bytes], rootfs: Path) -> None:
    """Apply one layer (an uncompressed tar stream) onto ``rootfs``: whiteouts first, then its entries."""
    root = Path(os.path.realpath(rootfs))
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        # In layer order, as the runtimes do: a whiteout removes what a lower layer had; a layer
        # never holds both an entry and its whiteout.
        written: set[str] = set()
        for member in archive:
            name = os.path.normpath(member.name).lstrip("/")
            base = os.path.basename(name)
            directory = os.path.dirname(name)
            if base == _OPAQUE:
                target = _inside(root, directory) if directory else root
                if target is not None and target.is_dir() and not target.is_symlink():
                    for child in target.iterdir():
                        # What this layer itself put there (before the marker) stays.
                        if os.path.join(directory, child.name) not in written:
                            _remove(child)
                continue
            if base.startswith(_WHITEOUT):
                target = _inside(root, os.path.join(directory, base[len(_WHITEOUT) :]))
                if target is not None:
                    _remove(target)
                continue
            _replace_conflicting(root, name, member)
            # As root, a directory's mode never stops its entries from being written: no need
            # to delay directories as extractall does.
            archive.extract(member, root, numeric_owner=True, filter=_keep_modes)
            written.add(name)


def _replace_conflicting(root: Path, name: str, member: tarfile.TarInfo) -> None:
    """An entry replaces what a lower layer had at its path, unless both are directories."""
    target = _inside(root, name)
    if target is None or not os.path.lexists(target):
        return
    if member.isdir() and target.is_dir() and not target.is_symlink():
        return
    _remove(target)


def resolve_in_root(root: Path, path: str) -> Path:
    """Where ``path`` of the image is on the host: its symlinks followed with ``root`` as ``/``.

    Images hold absolute links (``/var/run -> /run``) that on the host would lead out of the image.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(40, f"too many levels of symbolic links: {path}")
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p and p != "."] + parts
            if link.startswith("/"):
                resolved = []
            continue
        resolved.append(part)
    return root.joinpath(*resolved)
