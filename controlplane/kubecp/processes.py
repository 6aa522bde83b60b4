"""Start server processes in their own process groups and make sure they end.

Every process gets its own process group, so stopping it also stops what it
started. Unless detached, a process also gets ``PR_SET_PDEATHSIG``: if the
Python process that started it dies, even by SIGKILL, the kernel kills it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
# Looked up once here: the pre-exec hook runs between fork and exec, where it
# must not import or allocate more than it has to.
_prctl = _libc.prctl


def _die_with(parent: int) -> Callable[[], None]:
    def hook() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died before the line above took effect.
        if os.getppid() != parent:
            os._exit(1)

    return hook


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that are free right now.

    Every socket stays bound until all ports are chosen: closed one by one, the
    kernel could hand out the same ephemeral port twice.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


class Process:
    """A long-running server process writing to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_file: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        detach: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        #: What it was started with, so that :meth:`restarted` can start it again the same way.
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.detach = detach
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=None if detach else _die_with(os.getpid()),
            )
        self.pid = self.popen.pid

    def restarted(self) -> Process:
        """A new process with the same command, environment and log file (appended to)."""
        return Process(self.name, self.argv, self.log_file, env=self.env, cwd=self.cwd, detach=self.detach)

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash: no graceful shutdown) and reap the process."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        # Its sockets are free only once every thread of it has exited.
        deadline = time.monotonic() + 10
        while group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's log, for error messages."""
        return log_tail(self.log_file, lines)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it after ``timeout`` seconds; reap the process."""
        stop_group(self.pid, timeout)
        # Our own child: once its group is gone it is a zombie that must be reaped. A
        # busy machine may need seconds to finish the exit of a big multi-threaded server.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:])


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone.

    Together with the pid this identifies a process even after its pid was reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _stat_fields(proc_dir: Path) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state first), or None if the process is gone."""
    try:
        # The command name (field 2) may contain spaces and parentheses: split after it.
        return (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _running(proc_dir: Path, state: str) -> bool:
    """Whether a process in ``state`` is still running, finished zombies excepted.

    When a multi-threaded process dies, its main thread turns zombie first while
    the other threads are still exiting, for a second or more on a busy machine,
    and they still hold its sockets: such a zombie counts as running until it is
    its only task left.
    """
    if state != "Z":
        return True
    try:
        return len(os.listdir(proc_dir / "task")) > 1
    except OSError:
        return False


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not finished exiting (see :func:`group_alive`)."""
    proc_dir = Path(f"/proc/{pid}")
    fields = _stat_fields(proc_dir)
    return fields is not None and _running(proc_dir, fields[0])


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is left.

    Zombies count as gone, except one whose other threads are still exiting.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is not None and int(fields[2]) == pgid and _running(entry, fields[0]):
            return True
    return False


def stop_group(pgid: int, timeout: float = 10.0, start_time: int | None = None) -> None:
    """SIGTERM a process group, wait up to ``timeout`` seconds, then SIGKILL what is left.

    With ``start_time`` (see :func:`process_start_time`), do nothing if the pid
    now belongs to a different process: a recycled pid must not make us kill an
    unrelated process. If the leader is gone but its group is not (a container's
    main process exited, its children live on), the group is still ours (the
    kernel does not hand out a pid that is in use as a process group id) and is
    stopped all the same.
    """
    if start_time is not None:
        leader_start = process_start_time(pgid)
        if leader_start is not None and leader_start != start_time:
            return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.05)
