"""Run the operator: ``kubestep operator`` (or ``python -m kubestep.controller``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import kopf

from kubestep.controller.context import DEFAULT_DEDUPE_WINDOW
from kubestep.controller.handlers import register
from kubestep.controller.kube import FIELD_MANAGER
from kubestep.controller.leader import ElectionConfig


def run_operator(
    namespaces: Sequence[str] = (),
    dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW,
    verbose: bool = False,
    liveness: str | None = None,
    election: ElectionConfig | None = None,
    field_manager: str = FIELD_MANAGER,
) -> None:
    """Watch ``namespaces`` (all of them when empty) and run workflows until stopped (SIGINT, SIGTERM).

    With ``election``, reconcile only while holding the leader Lease it names.
    """
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.PLAIN)
    # kopf reports every watch reconnect and handler call at INFO: keep the operator's own log readable.
    logging.getLogger("kopf").setLevel(logging.INFO if verbose else logging.WARNING)
    registry = kopf.OperatorRegistry()
    register(registry, dedupe_window, election=election, field_manager=field_manager)
    # kopf's own peering is off (standalone): it pauses every operator while another is alive instead
    # of electing one, so leader election is ours (see `kubestep.controller.leader`).
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
    )
