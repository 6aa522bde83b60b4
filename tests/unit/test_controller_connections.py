"""How the operator's kopf connections are set up to outlive API-server outages."""

from __future__ import annotations

import itertools
import logging

import kopf

from kubestep.controller.main import EndlessBackoff, FirstRetryOnly, tune


def test_request_retries_double_to_a_cap_and_never_run_out() -> None:
    backoff = EndlessBackoff(cap=30)
    assert list(itertools.islice(backoff, 8)) == [1, 2, 4, 8, 16, 30, 30, 30]
    # Every request retries afresh from the start.
    assert next(iter(backoff)) == 1


def test_watches_end_server_side_are_given_up_client_side_later_and_requests_never_escalate() -> None:
    settings = kopf.OperatorSettings()
    tune(settings)
    server = settings.watching.server_timeout
    # Sent as the watch's timeoutSeconds: the API server refuses "300.0".
    assert isinstance(server, int) and server > 0
    assert settings.watching.client_timeout is not None and settings.watching.client_timeout > server
    assert settings.watching.connect_timeout and settings.networking.connect_timeout
    assert settings.networking.request_timeout
    assert settings.watching.inactivity_timeout > 60  # the API server's bookmarks come about every minute
    assert isinstance(settings.networking.error_backoffs, EndlessBackoff)


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("kopf._cogs.clients.watching", logging.ERROR, __file__, 1, message, None, None)


def test_only_the_first_retry_of_a_request_is_logged() -> None:
    keep = FirstRetryOnly().filter
    assert keep(record("Request attempt #1 failed; will retry: GET /apis/x -> ClientConnectorError()"))
    assert keep(record("Request attempt #1/9 failed; will retry: GET /apis/x -> ClientConnectorError()"))
    assert not keep(record("Request attempt #2 failed; will retry: GET /apis/x -> ClientConnectorError()"))
    assert not keep(record("Request attempt #12 failed; will retry: GET /apis/x -> ServerError()"))
    assert keep(record("Request attempt #9/9 failed; escalating: GET /apis/x -> ServerError()"))
    assert keep(record("an unrelated message"))
