"""What the containers' processes are, seen from the machine that runs them.

The process node runs every container as a process of this machine (sharing its PID namespace), so a
test on the same machine reads what a user of `ps` or `/proc` would: the process's user and group, and,
through ``/proc/<pid>/root``, the files its root (the image's, in its own mount namespace) holds.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class HostProcess:
    """One process of a container."""

    pid: int
    command: list[str]
    env: dict[str, str]
    uid: int
    gid: int

    @property
    def root(self) -> Path:
        """The process's root directory, with the mounts of its mount namespace."""
        return PROC / str(self.pid) / "root"

    def resolve(self, path: str) -> Path:
        """Where ``path`` of the process's view is, from here: its symlinks followed inside its root (an
        image's absolute link such as ``/var/run -> /run`` would otherwise lead to this machine's)."""
        parts = [part for part in path.split("/") if part]
        resolved: list[str] = []
        for _ in range(256):
            if not parts:
                return self.root.joinpath(*resolved)
            part = parts.pop(0)
            if part == "..":
                resolved = resolved[:-1]
                continue
            candidate = self.root.joinpath(*resolved, part)
            if candidate.is_symlink():
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            resolved.append(part)
        raise OSError(f"too many symbolic links in {path}")

    def sees(self, path: str) -> bool:
        """Whether ``path`` (absolute, in the process's view) is a file there."""
        try:
            return self.resolve(path).is_file()
        except OSError:
            return False

    def read(self, path: str) -> str:
        """A file as the process sees it."""
        return self.resolve(path).read_text()


def _read(pid: Path) -> HostProcess | None:
    try:
        environ = (pid / "environ").read_bytes()
        command = (pid / "cmdline").read_bytes()
        status = (pid / "status").read_text()
    except OSError:  # gone, or a kernel thread
        return None
    env = dict(entry.split("=", 1) for entry in environ.decode(errors="replace").split("\0") if "=" in entry)
    ids = {
        line.split(":")[0]: line.split()[1] for line in status.splitlines() if line[:4] in ("Uid:", "Gid:")
    }
    if "Uid" not in ids or "Gid" not in ids:
        return None
    return HostProcess(
        int(pid.name),
        [part.decode(errors="replace") for part in command.split(b"\0") if part],
        env,
        int(ids["Uid"]),
        int(ids["Gid"]),
    )


def processes(env_name: str, env_value: str) -> list[HostProcess]:
    """The processes of this machine whose environment has ``env_name=env_value``."""
    found = []
    for pid in PROC.iterdir():
        if pid.name.isdigit():
            process = _read(pid)
            if process is not None and process.env.get(env_name) == env_value:
                found.append(process)
    return found


class Sampler:
    """Looks for processes with an environment entry every ``interval`` seconds, in a thread, and keeps
    what each one was at its first sighting (short-lived step processes are caught while they run)."""

    def __init__(self, env_name: str, env_value: str, interval: float = 0.05) -> None:
        self.env_name, self.env_value, self.interval = env_name, env_value, interval
        self.seen: dict[int, tuple[HostProcess, dict[str, bool]]] = {}
        self.paths: tuple[str, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self, *paths: str) -> Sampler:
        """Start sampling; for each process, record whether it sees each of ``paths``."""
        self.paths = paths
        self._thread.start()
        return self

    def stop(self) -> list[tuple[HostProcess, dict[str, bool]]]:
        """Stop; every process seen, with what it saw."""
        self._stop.set()
        self._thread.join(timeout=10)
        return list(self.seen.values())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for process in processes(self.env_name, self.env_value):
                if process.pid not in self.seen:
                    sights = {path: process.sees(path) for path in self.paths}
                    self.seen[process.pid] = (process, sights)


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JSON Web Token (not verified: the API server did that when it accepted it)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims
