"""Proxy settings of the environment (common in CI) never get between a client and the loopback cluster."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client

from kubecp.cluster import ControlPlane
from kubecp.loopback import http_ok, no_proxy_env

# Nothing listens on the discard port: a client that uses this proxy fails.
DEAD_PROXY = "http://127.0.0.1:9"


def set_dead_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, DEAD_PROXY)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def web_server() -> Iterator[str]:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def test_readiness_probes_ignore_proxy_settings(web_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    set_dead_proxy(monkeypatch)
    assert http_ok(web_server)


def test_no_proxy_env_adds_loopback_once_in_both_spellings() -> None:
    env = no_proxy_env({"NO_PROXY": "example.com, localhost", "PATH": "/bin"})
    assert env["NO_PROXY"] == "example.com,localhost,127.0.0.1"
    assert env["no_proxy"] == "127.0.0.1,localhost"
    assert env["PATH"] == "/bin"


def test_api_client_and_kubectl_ignore_proxy_settings(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_dead_proxy(monkeypatch)
    with control_plane.api_client() as api:
        assert client.VersionApi(api).get_code().git_version
    assert control_plane.kubectl("get", "--raw=/readyz").stdout == "ok"
