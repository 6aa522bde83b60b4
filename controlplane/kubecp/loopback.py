"""Clients of servers on 127.0.0.1, which must never go through a proxy from the environment.

CI machines often set ``http_proxy``/``https_proxy``; urllib, the kubernetes
client and kubectl honour them, and a proxy cannot reach our loopback servers
(or reaches some other machine's). So every client of the cluster either
ignores proxies or has the loopback names in ``NO_PROXY``.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def no_proxy_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` whose ``NO_PROXY`` and ``no_proxy`` include the loopback hosts.

    Both spellings: Python prefers the lower-case one, Go the upper-case one.
    """
    result = dict(env)
    for key in ("NO_PROXY", "no_proxy"):
        entries = [entry.strip() for entry in result.get(key, "").split(",") if entry.strip()]
        result[key] = ",".join([*entries, *(host for host in LOOPBACK_HOSTS if host not in entries)])
    return result


def api_client(kubeconfig: Path) -> ApiClient:
    """A ``kubernetes.client.ApiClient`` for ``kubeconfig`` that connects directly, whatever the proxy env."""
    from kubernetes import client, config  # the official client is slow to import; only when needed

    # As config.new_client_from_config, with the proxy cleared before the client's
    # connection pool is made from the configuration.
    configuration = type.__call__(client.Configuration)
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.proxy = None
    return client.ApiClient(configuration)


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    """Whether a GET of ``url`` answers 200 (ignoring proxy settings); False on any connection error."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
