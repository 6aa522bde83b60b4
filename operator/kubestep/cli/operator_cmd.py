"""``kubestep operator``: run the operator in the foreground."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from kubestep.api.durations import parse_duration


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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log kopf's own activity.")] = False,
) -> None:
    """Run the kubestep operator: Events start runs, every step attempt runs as a Job.

    Uses the in-cluster ServiceAccount when there is one, else the kubeconfig (`$KUBECONFIG`). Stops on
    SIGINT or SIGTERM; a restarted operator picks up every run where it was.
    """
    try:
        window = timedelta(seconds=parse_duration(dedupe_window))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dedupe-window") from None
    # Imported here so that `kubestep run` never loads kopf.
    from kubestep.controller.main import run_operator

    run_operator(namespaces=namespace or [], dedupe_window=window, verbose=verbose, liveness=liveness)
