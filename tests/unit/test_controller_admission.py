"""The admission reconciler against an in-memory API: it grants from what the runs record, one workflow
per pass, never past a limit, and leaves a run that changed under it for the next pass."""

from __future__ import annotations

from test_controller_reconcilers import NS, T0, World, event_obj, workflow_obj

from kubestep.api.event import Event
from kubestep.api.flow import RunAdmission
from kubestep.api.run import RunPhase
from kubestep.api.workflow import Workflow
from kubestep.controller import builders
from kubestep.controller.context import Key
from kubestep.controller.kube import EVENTS, RUNS, WORKFLOWS, Conflict
from kubestep.controller.queue import Result

ADMISSION = Key("admission", NS, "contacts")


def capped(world: World, runs: int, limit: int = 1) -> list[str]:
    """A workflow capped at ``limit`` step attempts at once, and ``runs`` runs of it after a first pass."""
    obj = workflow_obj()
    obj["spec"]["concurrency"] = [{"limit": limit}]
    workflow = Workflow.model_validate(world.kube.put(WORKFLOWS, obj))
    names = []
    for i in range(runs):
        event = Event.model_validate(world.kube.put(EVENTS, event_obj(f"upload-{i}")))
        name = f"contacts-run-{i}"
        world.kube.put(RUNS, builders.event_run(workflow, event, name, T0))
        world.reconcile(Key("run", NS, name))
        names.append(name)
    return names


def test_queued_runs_wait_and_the_oldest_is_granted_within_the_limit() -> None:
    world = World()
    names = capped(world, 3)
    assert [world.run(n).status.phase for n in names] == [RunPhase.QUEUED] * 3
    assert world.jobs() == []
    assert world.reconcile(ADMISSION) == Result.done()
    admissions = [world.run(n).status.admission for n in names]
    assert [a.tickets if a else None for a in admissions] == [1, 0, 0]
    waiting = world.run(names[1]).status.conditions
    assert any(c.type == "Admitted" and c.reason == "ConcurrencyLimited" for c in waiting)
    world.reconcile(Key("run", NS, names[0]))
    assert len(world.jobs()) == 1 and world.run(names[0]).status.phase is RunPhase.RUNNING
    # The slot is taken by the Job now: a second pass grants nothing and writes nothing.
    assert world.reconcile(ADMISSION) == Result.done()
    assert world.kube.writes() == []


def tickets(world: World, names: list[str]) -> list[int]:
    return [(world.run(n).status.admission or RunAdmission()).tickets for n in names]


def test_a_run_changed_under_the_pass_is_left_for_the_next_and_never_granted_twice() -> None:
    world = World()
    names = capped(world, 2, limit=2)
    world.kube.fail(
        "replace_status", Conflict("the object has been modified", 409), name=f"{RUNS}/{names[0]}"
    )
    assert world.reconcile(ADMISSION) == Result.again()
    assert tickets(world, names) == [0, 1]
    assert world.reconcile(ADMISSION) == Result.done()
    assert tickets(world, names) == [1, 1]
    assert world.reconcile(ADMISSION) == Result.done()
    assert tickets(world, names) == [1, 1]


def test_a_workflow_without_flow_control_costs_no_list() -> None:
    world = World()
    world.kube.put(WORKFLOWS, workflow_obj())
    assert world.reconcile(ADMISSION) == Result.done()
    assert [c.method for c in world.kube.calls] == ["get"]
