"""``kubestep operator``: run the operator in the foreground."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from kubestep.api.durations import parse_duration

ELECTION = "Leader election"


def _seconds(value: str, option: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace", "-n", help="Watch this namespace (repeat for several). Default: all namespaces."
        ),
    ] = None,
    dedupe_window: Annotated[
        str,
        typer.Option(
            "--dedupe-window",
            help="How long an Event's spec.id is remembered: a second Event with the same name and id within "
            "this window starts nothing. A duration such as 24h or 30m.",
        ),
    ] = "24h",
    liveness: Annotated[
        str | None,
        typer.Option(
            "--liveness", help="Serve a health check at this URL, e.g. http://0.0.0.0:8080/healthz."
        ),
    ] = None,
    leader_elect: Annotated[
        bool,
        typer.Option(
            "--leader-elect",
            help="Run as one of several replicas: reconcile only while holding a coordination.k8s.io Lease; "
            "watch and stand by otherwise.",
            rich_help_panel=ELECTION,
        ),
    ] = False,
    lease_duration: Annotated[
        str,
        typer.Option(
            "--leader-elect-lease-duration",
            help="How long a standby waits, after it last saw the Lease change, before taking it. "
            "Whole seconds.",
            rich_help_panel=ELECTION,
        ),
    ] = "15s",
    renew_deadline: Annotated[
        str,
        typer.Option(
            "--leader-elect-renew-deadline",
            help="How long the leader keeps reconciling without a successful renewal; shorter than the "
            "lease duration.",
            rich_help_panel=ELECTION,
        ),
    ] = "10s",
    retry_period: Annotated[
        str,
        typer.Option(
            "--leader-elect-retry-period",
            help="How often the leader renews and a standby tries to take the Lease.",
            rich_help_panel=ELECTION,
        ),
    ] = "2s",
    lease_namespace: Annotated[
        str | None,
        typer.Option(
            "--leader-elect-namespace",
            help="The Lease's namespace. Default: $POD_NAMESPACE, else the in-cluster ServiceAccount's "
            "namespace, else default.",
            rich_help_panel=ELECTION,
        ),
    ] = None,
    lease_name: Annotated[
        str,
        typer.Option("--leader-elect-id", help="The Lease's name.", rich_help_panel=ELECTION),
    ] = "kubestep-operator",
    field_manager: Annotated[
        str,
        typer.Option(
            "--field-manager",
            help="The name the operator's writes are recorded under in metadata.managedFields.",
        ),
    ] = "kubestep-operator",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve Prometheus metrics at /metrics, and /healthz and /readyz, on this port. "
            "Default: off.",
        ),
    ] = None,
    metrics_address: Annotated[
        str,
        typer.Option("--metrics-address", help="The address the --metrics-port server listens on."),
    ] = "0.0.0.0",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log kopf's own activity.")] = False,
) -> None:
    """Run the kubestep operator: Events start runs, every step attempt runs as a Job.

    Uses the in-cluster ServiceAccount when there is one, else the kubeconfig (`$KUBECONFIG`). Stops on
    SIGINT or SIGTERM (a leader first hands its Lease over); a restarted operator picks up every run
    where it was.
    """
    window = timedelta(seconds=_seconds(dedupe_window, "--dedupe-window"))
    # Imported here so that `kubestep run` never loads kopf or the Kubernetes client.
    from kubestep.controller.leader import ElectionSettingError, election_config

    election = None
    if leader_elect:
        try:
            election = election_config(
                lease_duration=_seconds(lease_duration, "--leader-elect-lease-duration"),
                renew_deadline=_seconds(renew_deadline, "--leader-elect-renew-deadline"),
                retry_period=_seconds(retry_period, "--leader-elect-retry-period"),
                namespace=lease_namespace,
                name=lease_name,
            )
        except ElectionSettingError as exc:
            raise typer.BadParameter(str(exc), param_hint=exc.option) from None
    from kubestep.controller.main import run_operator

    run_operator(
        namespaces=namespace or [],
        dedupe_window=window,
        verbose=verbose,
        liveness=liveness,
        election=election,
        field_manager=field_manager,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
    )
