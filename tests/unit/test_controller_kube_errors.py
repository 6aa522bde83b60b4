"""API errors become the domain errors the reconcilers and the work queue act on."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from kubestep.controller.kube import (
    AlreadyExists,
    Conflict,
    KubeError,
    NotFound,
    Rejected,
    TooLarge,
    Unavailable,
    _domain_error,
)


def api_error(
    status: int, reason: str = "", headers: dict[str, str] | None = None, **details: object
) -> ApiException:
    body = {"kind": "Status", "message": f"status {status}", "reason": reason, "details": details}
    exc = ApiException(status=status, reason=reason, body=json.dumps(body))
    exc.headers = headers
    return exc


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (api_error(404, "NotFound"), NotFound),
        (api_error(409, "AlreadyExists"), AlreadyExists),
        (api_error(409, "Conflict"), Conflict),
        (api_error(422, "Invalid"), Rejected),
        (api_error(413), TooLarge),
        (api_error(429, "TooManyRequests"), Unavailable),
        (api_error(500, "InternalError"), Unavailable),
        (api_error(503, "ServiceUnavailable"), Unavailable),
        (api_error(504, "Timeout"), Unavailable),
        (urllib3.exceptions.ReadTimeoutError(None, "/apis", "read timed out"), Unavailable),
        (urllib3.exceptions.MaxRetryError(None, "/apis", ConnectionRefusedError()), Unavailable),
        (ConnectionResetError(), Unavailable),
    ],
)
def test_each_api_failure_becomes_one_domain_error(error: Exception, kind: type[KubeError]) -> None:
    assert type(_domain_error(error)) is kind


def test_throttling_carries_the_delay_the_server_asked_for() -> None:
    # The header (what the API server's priority and fairness sends) first, else the Status details.
    by_header = _domain_error(api_error(429, "TooManyRequests", {"Retry-After": "3"}, retryAfterSeconds=1))
    assert isinstance(by_header, Unavailable) and by_header.retry_after == 3.0
    by_details = _domain_error(api_error(429, "TooManyRequests", retryAfterSeconds=2))
    assert isinstance(by_details, Unavailable) and by_details.retry_after == 2.0
    # Absent, or an HTTP date: the queue's own backoff decides.
    for headers in (None, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}):
        error = _domain_error(api_error(503, "ServiceUnavailable", headers))
        assert isinstance(error, Unavailable) and error.retry_after is None
