"""`spec.paused` through the operator's reconcilers, against an in-memory API: admission tells the runs,
their passes start no Job while told, and resuming tells them again, also a run whose step still runs."""

from __future__ import annotations

import asyncio
from typing import Any

from test_controller_reconcilers import NS, RUN, T0, World, a_running_run, event_obj

from kubestep.api.event import Event
from kubestep.api.run import RunPhase
from kubestep.api.workflow import Workflow
from kubestep.controller import builders
from kubestep.controller.context import Key
from kubestep.controller.kube import EVENTS, RUNS, WORKFLOWS
from kubestep.controller.queue import Result
from kubestep.engine.admission import counted_phase

ADMISSION = Key("admission", NS, "contacts")


def set_paused(world: World, paused: bool) -> Workflow:
    obj = world.kube.peek(WORKFLOWS, NS, "contacts")
    assert obj is not None
    obj["spec"]["paused"] = paused
    return Workflow.model_validate(world.kube.put(WORKFLOWS, obj))


def admitted(world: World, name: str) -> tuple[str, str]:
    condition = next(c for c in world.run(name).status.conditions if c.type == "Admitted")
    return condition.status, condition.reason


def test_pausing_holds_new_runs_and_tells_runs_in_flight_and_resuming_tells_them_all() -> None:
    world = World()
    a_running_run(world)
    workflow = set_paused(world, True)
    assert world.reconcile(ADMISSION) == Result.done()
    assert admitted(world, RUN.name) == ("False", "WorkflowPaused")
    assert world.run(RUN.name).status.phase is RunPhase.RUNNING  # its step runs on

    event = Event.model_validate(world.kube.put(EVENTS, event_obj("upload-2")))
    world.kube.put(RUNS, builders.event_run(workflow, event, "late", T0))
    world.reconcile(Key("run", NS, "late"))
    assert world.run("late").status.phase is RunPhase.QUEUED
    world.reconcile(ADMISSION)
    world.reconcile(Key("run", NS, "late"))
    assert admitted(world, "late") == ("False", "WorkflowPaused")
    assert len(world.jobs()) == 1  # the first run's only

    # A second pass while paused writes nothing.
    world.reconcile(ADMISSION)
    assert world.kube.writes() == []

    set_paused(world, False)
    assert world.reconcile(ADMISSION) == Result.done()
    assert admitted(world, RUN.name) == ("True", "Admitted")  # while its step still runs
    assert admitted(world, "late") == ("True", "Admitted")
    world.reconcile(Key("run", NS, "late"))
    assert world.run("late").status.phase is RunPhase.RUNNING
    assert len(world.jobs()) == 2


def test_a_run_of_a_deleted_workflow_is_never_held() -> None:
    world = World()
    a_running_run(world)
    set_paused(world, True)
    world.reconcile(ADMISSION)
    asyncio.run(world.kube.delete_object(WORKFLOWS, NS, "contacts"))
    world.reconcile(ADMISSION)
    assert admitted(world, RUN.name) == ("True", "Admitted")


def test_a_run_told_of_a_pause_counts_as_queued_until_it_ends() -> None:
    told: dict[str, Any] = {"admission": {"paused": True}}
    assert counted_phase({"phase": "Running", **told}) == "Queued"
    assert counted_phase({"phase": "Sleeping", **told}) == "Queued"
    assert counted_phase({"phase": "Cancelled", **told}) == "Cancelled"
    assert counted_phase({"phase": "Running"}) == "Running"
    assert counted_phase({}) == "Pending"
