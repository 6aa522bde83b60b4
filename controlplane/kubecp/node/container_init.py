"""Become a container's process: private mounts, hostname, working directory, then exec.

Run by the process node as ``python -I container_init.py SPEC.json``; it
imports nothing of kubecp so it starts fast. In a new mount (and UTS)
namespace it bind-mounts the pod's volumes and the termination-message file
onto their absolute paths, so several pods can each see their own
``/dev/termination-log`` or ``/var/run/...``, and nothing of that is visible
outside. Where a mount point does not exist, a private overlay on its closest
existing parent directory provides it without touching the host's file system;
the overlays' writable layers live on a private tmpfs.

If anything before the exec fails, the reason goes to the spec's
``start_error_file`` (left empty otherwise) and the exit code is 128, which the
node reports as the runtime would (reason ``StartError``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
START_ERROR_EXIT_CODE = 128

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return [line.split()[4].replace("\\040", " ") for line in handle]


class Mounter:
    """Bind mounts in a private mount namespace, creating missing mount points in private overlays.

    Paths are the container's; ``root`` is where the container's ``/`` is while we
    are still in the host's view (``/``, or a new root when one was needed).
    """

    def __init__(
        self, scratch: str, paths: list[str], root: str | None = None, private_devices: set[int] | None = None
    ) -> None:
        # As /proc/self/mountinfo spells it, to recognise it among the mount points.
        self.scratch = os.path.realpath(scratch)
        #: File systems private to the container already, where a mount point can simply be made.
        self.overlay_devices: set[int] = set(private_devices or ())
        self.overlays = 0
        self.root = "/"
        if root is not None:
            # An image's root, private and writable already.
            self.root = root
            return
        # A missing top-level directory (mountPath /data) needs an overlay on / itself,
        # which only takes effect as a new root: set that up first, the rest goes inside.
        if any(self._needs_overlay_on_root(path) for path in paths):
            new_root = os.path.join(scratch, "rootfs")
            os.makedirs(new_root, exist_ok=True)
            self._overlay("/", new_root)
            self.root = new_root

    def _needs_overlay_on_root(self, path: str) -> bool:
        resolved = self._resolve(path)
        return not os.path.lexists(resolved) and self._closest_existing(resolved) == "/"

    def _on_host(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _resolve(self, path: str) -> str:
        """Resolve the symlinks of ``path`` inside the container's root, as far as it exists."""
        parts = [p for p in os.path.normpath(path).split("/") if p]
        resolved, hops = "/", 0
        while parts:
            candidate = os.path.join(resolved, parts.pop(0))
            host = self._on_host(candidate)
            if not os.path.islink(host):
                resolved = candidate
                continue
            hops += 1
            if hops > 40:
                raise OSError(40, f"too many levels of symbolic links: {path}")
            link = os.readlink(host)
            target = os.path.normpath(os.path.join("/" if link.startswith("/") else resolved, link))
            parts = [p for p in target.split("/") if p] + parts
            resolved = "/"
        return resolved

    def _closest_existing(self, path: str) -> str:
        while not os.path.lexists(self._on_host(path)):
            path = os.path.dirname(path)
        return path

    def _overlay(self, directory: str, mount_on: str) -> None:
        """Mount on ``mount_on`` an overlay of ``directory`` whose writable layer is private scratch."""
        base = os.path.join(self.scratch, f"overlay{self.overlays}")
        self.overlays += 1
        lower, upper, work = (os.path.join(base, part) for part in ("lower", "upper", "work"))
        for part in (lower, upper, work):
            os.makedirs(part, exist_ok=True)
        prefix = directory.rstrip("/") + "/"
        # The new root is inside the scratch space: there, the scratch space's own mounts
        # must stay out. An overlay in place on one of its ancestors (/tmp, with the
        # node's files in /tmp) must show it again, or later overlays would find their
        # scratch directories on this overlay rather than on the tmpfs.
        in_scratch = mount_on.startswith(self.scratch + "/")
        below = {
            p
            for p in _mount_points()
            if p.startswith(prefix)
            and p != prefix
            and not (in_scratch and (p == self.scratch or p.startswith(self.scratch + "/")))
        }
        # An overlay shows only its lower file system, not what is mounted below it
        # (/dev/pts under /dev, /proc under /): mount those again on top, outermost only
        # since each bind is recursive.
        outermost = sorted(p for p in below if not any(p.startswith(q + "/") for q in below if q != p))
        _mount(directory, lower, None, _MS_BIND | _MS_REC)
        # Held open: once the overlay covers an ancestor of the scratch space, the path
        # of `lower` leads into the overlay, no longer to the bind.
        lower_fd = os.open(lower, os.O_PATH | os.O_DIRECTORY)
        try:
            _mount("overlay", mount_on, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")
            self.overlay_devices.add(os.stat(mount_on).st_dev)
            for mount_point in outermost:
                relative = os.path.relpath(mount_point, directory)
                target = os.path.join(mount_on, relative)
                if os.path.lexists(target):
                    _mount(f"/proc/self/fd/{lower_fd}/{relative}", target, None, _MS_BIND | _MS_REC)
        finally:
            os.close(lower_fd)

    def ensure(self, path: str, directory: bool) -> str:
        """Make ``path`` exist (a directory or a file), privately if it did not; return it on the host."""
        resolved = self._resolve(path)
        host_path = self._on_host(resolved)
        if os.path.lexists(host_path):
            return host_path
        existing = self._closest_existing(resolved)
        host_parent = self._on_host(existing)
        # Inside one of our overlays a new entry is private already; elsewhere it needs one.
        if os.stat(host_parent).st_dev not in self.overlay_devices:
            self._overlay(host_parent, host_parent)
        if directory:
            os.makedirs(host_path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(host_path), exist_ok=True)
            with open(host_path, "a"):
                pass
        return host_path

    def bind(self, source: str, target: str, read_only: bool) -> None:
        """Bind-mount ``source`` onto ``target`` (created if missing)."""
        where = self.ensure(target, directory=os.path.isdir(source))
        _mount(source, where, None, _MS_BIND | _MS_REC)
        if read_only:
            _mount(None, where, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_REC)

    def enter(self, working_dir: str) -> None:
        """Change into the new root, if one was made, and into ``working_dir``."""
        self.ensure(working_dir, directory=True)
        if self.root != "/":
            os.chdir(self.root)
            os.chroot(".")
        os.chdir(working_dir)


_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
# What a runtime puts in a container's /dev.
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def image_root(scratch: str, rootfs: str) -> Mounter:
    """Make the container's root an overlay of the image's root file system, with /proc and /dev.

    The overlay's writable layer is on the private tmpfs ``scratch``: what the container writes
    vanishes with it, and the image's files are never changed.
    """
    root, upper, work = (os.path.join(scratch, part) for part in ("image", "image-upper", "image-work"))
    for path in (root, upper, work):
        os.makedirs(path, exist_ok=True)
    _mount("overlay", root, "overlay", 0, f"lowerdir={rootfs},upperdir={upper},workdir={work}")
    mounter = Mounter(scratch, [], root=root, private_devices={os.stat(root).st_dev})
    proc = mounter.ensure("/proc", directory=True)
    _mount("proc", proc, "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    dev = mounter.ensure("/dev", directory=True)
    _mount("tmpfs", dev, "tmpfs", _MS_NOSUID, "mode=0755")
    mounter.overlay_devices.add(os.stat(dev).st_dev)
    for name in _DEVICES:
        target = os.path.join(dev, name)
        with open(target, "a"):
            pass
        _mount(f"/dev/{name}", target, None, _MS_BIND)
    shm = os.path.join(dev, "shm")
    os.mkdir(shm)
    _mount("tmpfs", shm, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, os.path.join(dev, name))
    return mounter


def become(user: dict[str, Any]) -> None:
    """Take the container's user and groups (root may: the node runs as root when it runs images)."""
    os.setgroups([int(group) for group in user["groups"]])
    os.setgid(int(user["gid"]))
    os.setuid(int(user["uid"]))


def _fail(error_fd: int, message: str) -> None:
    try:
        os.write(error_fd, message.encode())
    finally:
        os._exit(START_ERROR_EXIT_CODE)


def main(spec_file: str) -> None:
    """Set up the container named in ``spec_file`` and exec its command."""
    with open(spec_file) as handle:
        spec: dict[str, Any] = json.load(handle)
    # Opened before the file system view changes (the exec closes it).
    error_fd = os.open(spec["start_error_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        # A container must not outlive its node (a real runtime would keep it, but
        # here nothing would be left to look after it).
        _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
        if os.getppid() != spec["node_pid"]:
            # The node died before the line above took effect.
            os._exit(128 + signal.SIGKILL)
        if spec.get("isolate", True):
            _check(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWUTS), "unshare")
            # Without this our mounts would propagate back to the host's namespace.
            _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
            # The kernel refuses an overlayfs directory as an overlay's upper or work
            # directory, and the node's files may well be on overlayfs (/tmp in a Docker
            # container): the overlays' scratch space is a private tmpfs instead, which
            # also vanishes with the container.
            os.makedirs(spec["scratch_dir"], exist_ok=True)
            _mount("tmpfs", spec["scratch_dir"], "tmpfs", 0, "mode=0755")
            hostname = spec.get("hostname", "").encode()
            if hostname:
                _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
            mounts = sorted(spec.get("mounts", []), key=lambda m: m["target"].count("/"))
            working_dir = spec.get("working_dir") or "/"
            if spec.get("rootfs"):
                mounter = image_root(spec["scratch_dir"], spec["rootfs"])
            else:
                mounter = Mounter(spec["scratch_dir"], [m["target"] for m in mounts] + [working_dir])
            for mount in mounts:
                mounter.bind(mount["source"], mount["target"], bool(mount.get("read_only")))
            # Like runc, create a missing working directory (privately).
            mounter.enter(working_dir)
        else:
            os.chdir(spec.get("working_dir") or "/")
        if spec.get("user"):
            become(spec["user"])
        if spec.get("no_new_privileges"):
            _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    except OSError as error:
        _fail(error_fd, f"failed to create containerd task: {error}")
    argv: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    # Python ignores SIGPIPE and SIGXFSZ; an exec'd program must start with the defaults.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as error:
        reason = (
            "executable file not found in $PATH" if isinstance(error, FileNotFoundError) else error.strerror
        )
        _fail(
            error_fd,
            "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
            f'runc create failed: unable to start container process: exec: "{argv[0]}": {reason}',
        )


if __name__ == "__main__":
    main(sys.argv[1])
