"""Run the operator: ``kubestep operator`` (or ``python -m kubestep.controller``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import kopf

from kubestep.controller.context import DEFAULT_DEDUPE_WINDOW
from kubestep.controller.handlers import register
from kubestep.controller.kube import FIELD_MANAGER
from kubestep.controller.leader import ElectionConfig
from kubestep.controller.metrics import METRICS, Server

#: How long the API server keeps one watch request open before it ends it (and kopf starts the next one,
#: from the last resourceVersion seen, so nothing is missed). Whole seconds: it is sent as the watch's
#: ``timeoutSeconds``, which the API server refuses unless it is an integer.
WATCH_SERVER_TIMEOUT = 300
#: The client gives up on a watch this much later than the server should have ended it: a connection that
#: went half-open (the server died without a word, a network path dropped it) is not waited on forever.
WATCH_CLIENT_SLACK = 60.0
#: How long an event-less watch is trusted: the API server sends a bookmark about every minute, so a longer
#: silence means a dead stream, which is then reopened from its last resourceVersion.
WATCH_INACTIVITY_TIMEOUT = 90.0
#: Seconds to open a connection (TCP and TLS) to the API server before trying again.
CONNECT_TIMEOUT = 10.0
#: Seconds for one of kopf's own short requests (listing, discovery), as the API module's read timeout.
REQUEST_TIMEOUT = 60.0
#: Delays between retries of one of kopf's requests: doubling from 1 s up to this, for as long as it takes.
RETRY_MAX_SECONDS = 30.0


class EndlessBackoff:
    """Delays between retries of a failed request: 1, 2, 4 … capped at ``cap`` seconds, never giving up.

    kopf escalates a request that still fails after its last backoff; for a watch, a server error (5xx)
    escalated that way ends the operator. An API server that is down or restarting for longer than any
    fixed budget must only delay the watches, never end them: each retry iterates afresh.
    """

    def __init__(self, cap: float = RETRY_MAX_SECONDS) -> None:
        self.cap = cap

    def __iter__(self) -> Iterator[float]:
        delay = 1.0
        while True:
            yield delay
            delay = min(delay * 2, self.cap)


def tune(settings: kopf.OperatorSettings) -> None:
    """Make kopf's connections to the API server outlive its outages and notice dead connections."""
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_SERVER_TIMEOUT + WATCH_CLIENT_SLACK
    settings.watching.connect_timeout = CONNECT_TIMEOUT
    settings.watching.inactivity_timeout = WATCH_INACTIVITY_TIMEOUT
    settings.networking.connect_timeout = CONNECT_TIMEOUT
    settings.networking.request_timeout = REQUEST_TIMEOUT
    settings.networking.error_backoffs = EndlessBackoff()


def serve_metrics(registry: kopf.OperatorRegistry, address: str, port: int) -> None:
    """Serve the metrics, ``/healthz`` and ``/readyz`` on ``address:port`` while the operator runs.

    Ready once the operator's startup is done (a standby of leader election is ready too: it is there to
    take over). ``/healthz`` also shows the leader election's state, as ``--liveness`` does.
    """

    @kopf.on.startup(registry=registry)
    async def start_metrics(memo: kopf.Memo, **_: Any) -> None:
        def health() -> dict[str, Any]:
            elector = memo.get("elector")
            return {"leader": elector.state()} if elector is not None else {}

        server = Server(METRICS, ready=lambda: "queue" in memo, health=health)
        await server.start(address, port)
        memo["metrics_server"] = server

    @kopf.on.cleanup(registry=registry)
    async def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
        server: Server | None = memo.get("metrics_server")
        if server is not None:
            await server.stop()


class FirstRetryOnly(logging.Filter):
    """Let through the first failure of a kopf request that is retried, not every later retry of it.

    During an outage every watch retries without end: one line per watch says it lost the API server;
    the operator's own reconcile log says when work is delayed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        retried = _RETRIED.match(record.getMessage())
        return retried is None or retried.group(1) == "1"


_RETRIED = re.compile(r"Request attempt #(\d+)\S* failed; will retry")


def run_operator(
    namespaces: Sequence[str] = (),
    dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW,
    verbose: bool = False,
    liveness: str | None = None,
    election: ElectionConfig | None = None,
    field_manager: str = FIELD_MANAGER,
    metrics_port: int | None = None,
    metrics_address: str = "0.0.0.0",
) -> None:
    """Watch ``namespaces`` (all of them when empty) and run workflows until stopped (SIGINT, SIGTERM).

    With ``election``, reconcile only while holding the leader Lease it names. With ``metrics_port``, serve
    Prometheus metrics, ``/healthz`` and ``/readyz`` there.
    """
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.PLAIN)
    # kopf reports every watch reconnect and handler call at INFO: keep the operator's own log readable.
    logging.getLogger("kopf").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        # On the handlers: kopf's modules log requests under their own loggers, which a filter on one
        # logger would not see.
        for handler in logging.getLogger().handlers:
            handler.addFilter(FirstRetryOnly())
        # The client's quick reconnects within one call: the call's own failure is what the log reports.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    registry = kopf.OperatorRegistry()
    register(registry, dedupe_window, election=election, field_manager=field_manager)

    @kopf.on.startup(registry=registry)
    def tune_connections(settings: kopf.OperatorSettings, **_: Any) -> None:
        tune(settings)

    if metrics_port is not None:
        serve_metrics(registry, metrics_address, metrics_port)

    # kopf's own peering is off (standalone): it pauses every operator while another is alive instead
    # of electing one, so leader election is ours (see `kubestep.controller.leader`).
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
    )
