"""A container registry on 127.0.0.1 (distribution's ``registry``, built by kubecp.gotools), plain HTTP.

The process node pulls the images of such a loopback registry itself (see kubecp.node.images), so
tests push what they build here and name it in pods as ``127.0.0.1:<port>/<repository>:<tag>``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from kubecp.gotools import ensure_tool

_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


class RegistryError(RuntimeError):
    """The registry could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Registry:
    """A registry process serving ``storage`` on a free port of 127.0.0.1 until :meth:`stop`."""

    def __init__(self, storage: Path, config_dir: Path | None = None) -> None:
        self.storage = storage
        #: Its configuration and log.
        self.config_dir = config_dir or storage.parent
        self.log_file = self.config_dir / "registry.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Registry:
        """Start the registry (building it first if needed) and wait until it answers."""
        binary = ensure_tool("registry")
        self.storage.mkdir(parents=True, exist_ok=True)
        # Another process may take a port between our probe and the registry's bind: try again then.
        for _ in range(5):
            self.port = free_port()
            self.config_dir.mkdir(parents=True, exist_ok=True)
            config = self.config_dir / f"registry-{self.port}.yml"
            config.write_text(_CONFIG.format(storage=json.dumps(str(self.storage)), port=self.port))
            with self.log_file.open("ab") as log:
                self._process = subprocess.Popen(
                    [str(binary), "serve", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
                )
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RegistryError(f"the registry did not start; log {self.log_file}:\n{self._log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as response,
            ):
                if response.status == 200:
                    return True
            time.sleep(0.1)
        return False

    def _log_tail(self) -> str:
        try:
            return "".join(self.log_file.read_text(errors="replace").splitlines(keepends=True)[-20:])
        except OSError:
            return ""

    def has(self, repository: str, tag: str) -> bool:
        """Whether ``repository:tag`` is in the registry."""
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                return True
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return False
            raise

    def stop(self) -> None:
        """Stop the registry process."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
