"""Container log files in the CRI format, and reading them back the way the kubelet serves them.

Each line of a file is ``<RFC3339Nano time> <stdout|stderr> <F|P> <text>``: ``P``
marks a piece of a line longer than 16 KiB, ``F`` the end of a line.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# containerd splits longer lines into partial entries of this size.
MAX_ENTRY = 16 * 1024


def timestamp_ns() -> str:
    """Now, as the RFC3339Nano text the runtime writes into log files."""
    nanos = time.time_ns()
    seconds, fraction = divmod(nanos, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def parse_timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC3339(Nano) UTC timestamp (``...Z``)."""
    text = text.rstrip("Z")
    whole, _, fraction = text.partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


class LogWriter:
    """Copies a container's stdout and stderr into one log file, line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab", buffering=0)
        self._lock = threading.Lock()
        self._pumps: list[threading.Thread] = []

    def pump(self, stream: str, pipe: IO[bytes]) -> None:
        """Copy ``pipe`` (the container's ``stream``) into the file, in a thread, until it closes."""
        thread = threading.Thread(target=self._copy, args=(stream, pipe), name=f"log-{stream}", daemon=True)
        thread.start()
        self._pumps.append(thread)

    def _copy(self, stream: str, pipe: IO[bytes]) -> None:
        label = stream.encode()
        with pipe:
            while True:
                chunk = pipe.readline(MAX_ENTRY)
                if not chunk:
                    return
                full = chunk.endswith(b"\n")
                # A last line without a newline is still a full line; only a cut one is partial.
                tag = b"F" if full or len(chunk) < MAX_ENTRY else b"P"
                entry = b"%s %s %s %s\n" % (timestamp_ns().encode(), label, tag, chunk.rstrip(b"\n"))
                with self._lock:
                    self._file.write(entry)

    def close(self) -> None:
        """Wait for the pipes to be drained, then close the file."""
        for thread in self._pumps:
            thread.join()
        self._file.close()


@dataclass
class LogOptions:
    """What the kubelet's ``/containerLogs`` endpoint accepts (corev1.PodLogOptions)."""

    follow: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    timestamps: bool = False
    since_ns: int | None = None


@dataclass
class _Entry:
    time: str
    tag: str
    text: bytes


def _parse(line: bytes) -> _Entry | None:
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    text = parts[3] if len(parts) == 4 else b""
    return _Entry(parts[0].decode(), parts[2].decode(), text)


def _render(entry: _Entry, options: LogOptions) -> bytes:
    text = entry.text + (b"\n" if entry.tag == "F" else b"")
    return (entry.time.encode() + b" " + text) if options.timestamps else text


def read_log(
    path: Path,
    options: LogOptions,
    write: Callable[[bytes], None],
    finished: Callable[[], bool] = lambda: True,
    stop: threading.Event | None = None,
) -> None:
    """Write the log at ``path`` to ``write`` as selected by ``options``.

    With ``follow``, keep writing new lines until ``finished()`` says the
    container has exited and everything it wrote has been sent (or ``stop`` is set).
    """
    remaining = options.limit_bytes

    def emit(data: bytes) -> bool:
        nonlocal remaining
        if remaining is not None:
            data = data[:remaining]
            remaining -= len(data)
        if data:
            write(data)
        return remaining is None or remaining > 0

    def selected(entry: _Entry) -> bool:
        return options.since_ns is None or parse_timestamp_ns(entry.time) >= options.since_ns

    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        entries: deque[_Entry] | list[_Entry]
        entries = deque(maxlen=options.tail_lines) if options.tail_lines is not None else []
        if options.tail_lines != 0:
            while line := handle.readline():
                if not line.endswith(b"\n"):
                    # Being written right now: read it again later.
                    handle.seek(-len(line), 1)
                    break
                entry = _parse(line)
                if entry is not None and selected(entry):
                    entries.append(entry)
        else:
            handle.seek(0, 2)
        for entry in entries:
            if not emit(_render(entry, options)):
                return
        while options.follow and not (stop is not None and stop.is_set()):
            done = finished()
            line = handle.readline()
            if line.endswith(b"\n"):
                entry = _parse(line)
                if entry is not None and selected(entry) and not emit(_render(entry, options)):
                    return
                continue
            if line:
                handle.seek(-len(line), 1)
            if done:
                return
            time.sleep(0.1)


def tail_text(path: Path, lines: int, max_bytes: int) -> str:
    """The last ``lines`` lines of the log, then at most their last ``max_bytes`` bytes.

    This is the kubelet's ``FallbackToLogsOnError`` termination message.
    """
    chunks: list[bytes] = []
    read_log(path, LogOptions(tail_lines=lines), chunks.append)
    return b"".join(chunks)[-max_bytes:].decode(errors="replace")
