"""One run of a container: a local process started through ``container_init``, its logs and its end."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kubecp.node.api import now
from kubecp.node.container_init import START_ERROR_EXIT_CODE
from kubecp.node.logs import LogWriter
from kubecp.node.users import RunAs
from kubecp.processes import process_start_time

INIT_SCRIPT = Path(__file__).resolve().parent / "container_init.py"


@dataclass(frozen=True)
class Mount:
    """A host file or directory to appear at ``target`` in the container."""

    source: Path
    target: str
    read_only: bool = False


@dataclass
class Exit:
    """How a container run ended."""

    exit_code: int
    finished_at: dt.datetime
    #: Set when the process never started (bad command, failed mount): the runtime's message.
    start_error: str | None = None


@dataclass
class ContainerRun:
    """A container process (one restart of a container)."""

    name: str
    run_dir: Path
    argv: Sequence[str]
    env: Mapping[str, str]
    mounts: Sequence[Mount]
    working_dir: str | None
    hostname: str
    isolate: bool
    python: str
    on_exit: Callable[[ContainerRun], None]
    #: The image's unpacked root file system, for a container of an image (else it runs on the node's).
    rootfs: Path | None = None
    #: uid, gid and groups to run as, for a container of an image (else the node's user).
    user: RunAs | None = None
    #: ``allowPrivilegeEscalation: false``: setuid programs give no privileges (images only).
    no_new_privileges: bool = False
    log_file: Path = field(init=False)
    #: As a runtime names containers (``<type>://<id>``); new for every run.
    container_id: str = field(init=False)
    pid: int | None = None
    started_at: dt.datetime | None = None
    exit: Exit | None = None

    def __post_init__(self) -> None:
        self.log_file = self.run_dir.parent / f"{self.run_dir.name}.log"
        self.container_id = f"kubecp://{uuid.uuid4().hex}"

    def start(self) -> None:
        """Start the process; ``on_exit`` is called (from another thread) when it has ended."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "argv": list(self.argv),
            "env": dict(self.env),
            "mounts": [
                {"source": str(m.source), "target": m.target, "read_only": m.read_only} for m in self.mounts
            ],
            "working_dir": self.working_dir,
            "hostname": self.hostname,
            "isolate": self.isolate,
            "scratch_dir": str(self.run_dir / "scratch"),
            "start_error_file": str(self._start_error_file),
            "node_pid": os.getpid(),
            "rootfs": str(self.rootfs) if self.rootfs is not None else None,
            "user": (
                {"uid": self.user.uid, "gid": self.user.gid, "groups": list(self.user.groups)}
                if self.user is not None
                else None
            ),
            "no_new_privileges": self.no_new_privileges,
        }
        spec_file = self.run_dir / "spec.json"
        spec_file.write_text(json.dumps(spec))
        writer = LogWriter(self.log_file)
        self.started_at = now()
        popen = subprocess.Popen(
            [self.python, "-I", str(INIT_SCRIPT), str(spec_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            # Its own group: killing the container kills everything it started.
            start_new_session=True,
        )
        self.pid = popen.pid
        # Lets the control plane kill it even if this node dies before it can.
        self._pid_file.write_text(f"{popen.pid} {process_start_time(popen.pid)}\n")
        assert popen.stdout is not None and popen.stderr is not None
        writer.pump("stdout", popen.stdout)
        writer.pump("stderr", popen.stderr)
        threading.Thread(
            target=self._wait, args=(popen, writer), name=f"wait-{self.name}", daemon=True
        ).start()

    @property
    def _pid_file(self) -> Path:
        return self.run_dir.parent / "pid"

    @property
    def _start_error_file(self) -> Path:
        return self.run_dir / "start-error"

    def _wait(self, popen: subprocess.Popen[bytes], writer: LogWriter) -> None:
        code = popen.wait()
        # When a container's main process ends, the runtime ends the rest of it too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        writer.close()
        self._pid_file.unlink(missing_ok=True)
        start_error = None
        if code == START_ERROR_EXIT_CODE:
            start_error = self._start_error_file.read_text() if self._start_error_file.exists() else None
            start_error = start_error or None
        killed_by = -code if code < 0 else None
        self.exit = Exit(
            # The runtime reports death by signal N as 128 + N, as a shell would.
            exit_code=128 + killed_by if killed_by else code,
            finished_at=now(),
            start_error=start_error,
        )
        self.on_exit(self)

    def running(self) -> bool:
        """Whether the process has been started and not yet ended."""
        return self.pid is not None and self.exit is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the container's main process (as the runtime does for SIGTERM)."""
        if self.running() and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL every process of the container."""
        if self.running() and self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
