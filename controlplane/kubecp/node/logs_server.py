"""The kubelet's HTTPS API, as far as ``kubectl logs`` needs it: ``/containerLogs/...``.

The apiserver connects with its kubelet client certificate (``--kubelet-client-certificate``),
which must be signed by the cluster CA; it verifies our serving certificate
(``--kubelet-certificate-authority``).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

from kubecp.node.api import parse_time
from kubecp.node.logs import LogOptions, read_log

log = logging.getLogger("kubecp.node")


class LogSource(Protocol):
    """What the server needs of a pod (implemented by PodWorker)."""

    def find_log(self, container: str, previous: bool) -> tuple[Path, Callable[[], bool]] | None:
        """Log file of a container run and whether that run has ended."""
        ...

    def container_names(self) -> list[str]:
        """Names of the pod's containers."""
        ...


Lookup = Callable[[str, str], LogSource | None]


class Reply(Exception):
    """A plain-text answer that ends the request (errors go on to kubectl through the apiserver)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def log_options(query: dict[str, list[str]]) -> LogOptions:
    """Parse the query parameters of corev1.PodLogOptions."""

    def first(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    def number(name: str) -> int | None:
        value = first(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise Reply(400, f"invalid {name}: {value!r}") from None

    since_ns = None
    if (seconds := number("sinceSeconds")) is not None:
        since_ns = time.time_ns() - seconds * 1_000_000_000
    elif (since_time := first("sinceTime")) is not None:
        since_ns = int(parse_time(since_time).timestamp() * 1_000_000_000)
    return LogOptions(
        follow=first("follow") == "true",
        tail_lines=number("tailLines"),
        limit_bytes=number("limitBytes"),
        timestamps=first("timestamps") == "true",
        since_ns=since_ns,
    )


class LogsServer:
    """A threaded HTTPS server on loopback serving container logs."""

    def __init__(
        self, lookup: Lookup, cert_file: Path, key_file: Path, client_ca_file: Path, port: int = 0
    ) -> None:
        self.lookup = lookup
        self.stopping = threading.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert_file), str(key_file))
        context.load_verify_locations(str(client_ca_file))
        # Only the apiserver (or another holder of a cluster-CA client certificate) may read logs.
        context.verify_mode = ssl.CERT_REQUIRED
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="logs-server", daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (ends followers too)."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "kubecp-node"

            def log_message(self, format: str, *args: object) -> None:
                log.debug("logs server: " + format, *args)

            def do_GET(self) -> None:
                try:
                    server._serve(self)
                except Reply as error:
                    self._plain(error.status, str(error))
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the client went away (kubectl logs -f interrupted)

            def _plain(self, status: int, text: str) -> None:
                body = (text + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(request.path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            raise Reply(200, "ok")
        if parts[0] in ("exec", "attach", "portForward", "run"):
            raise Reply(501, f"{parts[0]} is not supported by the process node")
        if parts[0] != "containerLogs" or len(parts) != 4:
            raise Reply(404, "404 page not found")
        _, namespace, pod_name, container = parts
        query = urllib.parse.parse_qs(url.query)
        options = log_options(query)
        previous = (query.get("previous") or ["false"])[0] == "true"
        pod = self.lookup(namespace, pod_name)
        if pod is None:
            raise Reply(404, f'pod "{pod_name}" not found in namespace "{namespace}" on this node')
        if container not in pod.container_names():
            raise Reply(400, f'container "{container}" in pod "{pod_name}" is not available')
        found = pod.find_log(container, previous)
        if found is None:
            if previous:
                raise Reply(400, f'previous terminated container "{container}" in pod "{pod_name}" not found')
            raise Reply(400, f'container "{container}" in pod "{pod_name}" is waiting to start')
        path, finished = found
        request.send_response(200)
        request.send_header("Content-Type", "text/plain")
        # No length: the body ends when we close the connection (follow streams until then).
        request.send_header("Connection", "close")
        request.end_headers()

        def write(data: bytes) -> None:
            request.wfile.write(data)

        read_log(path, options, write, finished, self.stopping)
        request.close_connection = True
