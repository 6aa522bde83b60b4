"""The leader gate of the API module: a write is refused at the last moment before it leaves, reads pass.

A local HTTP server stands in for the API server and records what reaches it, so the tests see what a
real API server would have received from a process that lost its lease while a write was on its way.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from kubestep.controller.kube import Kube, NotLeading


class Recorder(BaseHTTPRequestHandler):
    received: list[str] = []

    def _answer(self) -> None:
        self.received.append(f"{self.command} {self.path.split('?')[0]}")
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"apiVersion": "v1", "kind": "Event", **EVENT}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer  # noqa: N815 (the names http.server calls)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def api_client(host: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = host
    return client.ApiClient(configuration)


EVENT = {"metadata": {"name": "x"}, "reason": "R", "message": "m", "involvedObject": {"name": "r"}}


def test_a_write_is_refused_when_the_lease_lapses_after_the_first_check(server: str) -> None:
    # Leading when the call is handed to its thread, no longer when the request goes onto the wire: the
    # state a process frozen between the two is in when it wakes up.
    answers = iter([True, False])
    kube = Kube(api_client(server), may_write=lambda: next(answers))
    with pytest.raises(NotLeading):
        asyncio.run(kube.post_event("team-a", EVENT))
    assert Recorder.received == []


def test_reads_pass_the_gate_and_writes_pass_while_leading(server: str) -> None:
    leading = [False]
    kube = Kube(api_client(server), may_write=lambda: leading[0])
    asyncio.run(kube.get("workflowruns", "team-a", "r"))
    leading[0] = True
    asyncio.run(kube.post_event("team-a", EVENT))
    assert Recorder.received == [
        "GET /apis/kubestep.dev/v1alpha1/namespaces/team-a/workflowruns/r",
        "POST /api/v1/namespaces/team-a/events",
    ]


def test_without_an_election_nothing_is_gated(server: str) -> None:
    kube = Kube(api_client(server))
    asyncio.run(kube.post_event("team-a", EVENT))
    assert Recorder.received == ["POST /api/v1/namespaces/team-a/events"]
