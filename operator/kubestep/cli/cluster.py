"""The command line's connection to a cluster: kubeconfig and context as kubectl reads them, and every API
call the read and write commands make, with client errors turned into one-line ``CliError`` messages."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from kubestep.api.base import GROUP, VERSION

Obj = dict[str, Any]

RUNS = "workflowruns"
EVENTS = "events"
WORKFLOWS = "workflows"
#: The step container of a step pod (the operator's builders name it so).
STEP_CONTAINER = "step"
#: (connect, read) seconds: an unreachable server is reported quickly rather than waited for.
REQUEST_TIMEOUT = (5, 30)

EXIT_FAILURE = 1
EXIT_USAGE = 2

_KINDS = {RUNS: "run", EVENTS: "event", WORKFLOWS: "workflow"}


class CliError(Exception):
    """A problem to report in one line, with the process's exit code (1: not found or unreachable,
    2: bad usage)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Target:
    """Which cluster and namespace a command talks to, as chosen by ``--kubeconfig``, ``--context``,
    ``-n`` and ``-A``."""

    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False


class Cluster:
    """The API calls of the ``kubestep`` commands, in the target's namespace."""

    def __init__(self, target: Target) -> None:
        path = str(target.kubeconfig) if target.kubeconfig else None
        if target.kubeconfig is not None and not target.kubeconfig.is_file():
            raise CliError(f"--kubeconfig {target.kubeconfig}: no such file", EXIT_USAGE)
        try:
            contexts, active = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
            chosen = active
            if target.context is not None:
                chosen = next((c for c in contexts if c["name"] == target.context), None)
                if chosen is None:
                    known = ", ".join(c["name"] for c in contexts)
                    raise CliError(
                        f"--context {target.context}: no such context (known: {known})", EXIT_USAGE
                    )
            configuration = client.Configuration()
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=target.context, client_configuration=configuration
            )
        except (ConfigException, OSError, TypeError) as exc:
            raise CliError(
                f"cannot read the kubeconfig: {exc}; give one with --kubeconfig", EXIT_USAGE
            ) from None
        # One try: an unreachable server is reported at once, not after urllib3's retries.
        configuration.retries = 0
        self.server = str(configuration.host)
        self.api = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.all_namespaces = target.all_namespaces
        self.namespace = target.namespace or (chosen or {}).get("context", {}).get("namespace") or "default"

    # Errors ---------------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            raise self._api_error(what, exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CliError(f"cannot reach the API server at {self.server}: {_short(reason)}") from None

    def _api_error(self, what: str, exc: ApiException) -> CliError:
        if exc.status == 404:
            return CliError(f"{what} not found")
        if exc.status in (401, 403):
            return CliError(f"{what}: forbidden ({exc.reason}); check your kubeconfig's user and RBAC")
        message = exc.reason or ""
        with contextlib.suppress(ValueError, AttributeError):  # a body that is no Status: keep the reason
            message = json.loads(exc.body or "{}").get("message") or message
        exit_code = EXIT_USAGE if exc.status in (400, 422) else EXIT_FAILURE
        return CliError(f"{what}: {message}", exit_code)

    def _where(self) -> str:
        return "all namespaces" if self.all_namespaces else f"namespace {self.namespace}"

    # kubestep objects -----------------------------------------------------------------------------------

    def get(self, plural: str, name: str) -> Obj:
        """One kubestep object of the namespace."""
        what = f"{_KINDS[plural]} {name} in namespace {self.namespace}"
        try:
            return cast(
                Obj,
                self._call(
                    what,
                    self.custom.get_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    plural,
                    name,
                ),
            )
        except CliError as exc:
            if str(exc).endswith(" not found"):
                self.check_namespace()
            raise

    def list(self, plural: str, selector: str | None = None) -> list[Obj]:
        """Every kubestep object of a kind in the namespace (or all, with ``-A``), oldest first."""
        kwargs = {"label_selector": selector} if selector else {}
        if self.all_namespaces:
            found = self._call(
                f"{plural} in all namespaces",
                self.custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                plural,
                **kwargs,
            )
        else:
            found = self._call(
                f"{plural} in namespace {self.namespace}",
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
                **kwargs,
            )
        items = list(found.get("items", []))
        if not items and not self.all_namespaces:
            self.check_namespace()
        return sorted(
            items, key=lambda o: (o["metadata"].get("creationTimestamp") or "", o["metadata"]["name"])
        )

    def create(self, plural: str, body: Obj) -> Obj:
        """Create a kubestep object in the namespace."""
        meta = body["metadata"]
        what = f"creating {_KINDS[plural]} {meta.get('name') or meta.get('generateName')}"
        self.check_namespace()
        return cast(
            Obj,
            self._call(
                what,
                self.custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
                body,
            ),
        )

    def merge_patch(self, plural: str, name: str, patch: Obj) -> Obj:
        """Merge ``patch`` into a kubestep object's spec or metadata."""
        return cast(
            Obj,
            self._call(
                f"{_KINDS[plural]} {name} in namespace {self.namespace}",
                self.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
                name,
                patch,
            ),
        )

    def check_namespace(self) -> None:
        """Fail with a clear message when the namespace does not exist (when allowed to tell)."""
        try:
            self.core.read_namespace(self.namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                raise CliError(f"namespace {self.namespace} not found") from None
            # Forbidden to read namespaces: say nothing about it.
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CliError(f"cannot reach the API server at {self.server}: {_short(reason)}") from None

    # Step pods -----------------------------------------------------------------------------------------

    def job_pod_logs(self, namespace: str, job: str) -> str | None:
        """The step container's log of the newest pod of Job ``job``, or None when no pod is left."""
        pods = self._call(
            f"pods of Job {job}",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=f"job-name={job}",
        ).items
        if not pods:
            return None
        pod = max(pods, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))
        try:
            text = self._call(
                f"log of pod {pod.metadata.name}",
                self.core.read_namespaced_pod_log,
                pod.metadata.name,
                namespace,
                container=STEP_CONTAINER,
            )
        except CliError as exc:
            # A pod that has not started has no log yet; one being deleted may have lost it.
            if "not found" in str(exc) or "waiting to start" in str(exc) or "ContainerCreating" in str(exc):
                return None
            raise
        return str(text or "")


def _short(reason: object) -> str:
    text = str(reason)
    # urllib3 says "<urllib3.connection.HTTPSConnection object at 0x...>: Failed to establish a new
    # connection: [Errno 111] Connection refused": keep the part people read.
    if ": " in text and "object at 0x" in text:
        text = text.split(": ", 1)[1]
    return text.splitlines()[0] if text else "no answer"
