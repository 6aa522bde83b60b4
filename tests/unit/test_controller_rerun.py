"""Reruns through the run reconciler (on the in-memory API stand-in): a request on an ended run makes the
operator create the rerun from its own records, once, and list it."""

from __future__ import annotations

from fake_kube import NOTES
from test_controller_reconcilers import NS, RUN, World, a_run

from kubestep.api.names import rerun_name
from kubestep.api.run import StepPhase
from kubestep.controller.context import Key
from kubestep.controller.kube import RUNS, WORKFLOWS

RERUN = Key("run", NS, rerun_name(RUN.name, 0))
ENDED = {
    "phase": "Failed",
    "steps": [
        {"id": "a", "name": "a", "phase": "Succeeded", "output": {"n": 1}},
        {"id": "b", "name": "b", "phase": "Failed", "error": {"type": "E", "message": "m"}},
    ],
}


def an_ended_run_asked_to_rerun(world: World) -> None:
    a_run(world)
    world.kube.touch(RUNS, NS, RUN.name, status=ENDED)
    obj = world.kube.peek(RUNS, NS, RUN.name)
    assert obj is not None
    world.kube.touch(RUNS, NS, RUN.name, spec={**obj["spec"], "rerunRequests": [{}]})


def test_the_operator_creates_the_rerun_with_the_workflows_spec_and_lists_it() -> None:
    world = World()
    an_ended_run_asked_to_rerun(world)
    # The Workflow changed since the original started (a fix): the rerun takes it as it is now.
    workflow = world.kube.peek(WORKFLOWS, NS, "contacts")
    assert workflow is not None
    world.kube.touch(
        WORKFLOWS, NS, "contacts", spec={**workflow["spec"], "image": "registry.example/contacts:2"}
    )
    world.reconcile()
    original = world.run(RUN.name)
    assert original.status.reruns == [RERUN.name] and original.status.rerun_requests_handled == 1
    created = [c.method for c in world.kube.writes() if c.method != "post_event"]
    assert created == ["create", "replace_status"]  # the rerun exists before the status saying so
    new = world.run(RERUN.name)
    assert new.spec.workflow.image == "registry.example/contacts:2"
    assert new.spec.event == original.spec.event
    assert new.spec.rerun is not None and new.spec.rerun.of == RUN.name and new.spec.rerun.from_step == "b"
    assert new.spec.rerun_requests == [] and not new.metadata.owner_references
    # The rerun starts from the reused step.
    world.reconcile(RERUN)
    started = world.run(RERUN.name)
    assert started.status.rerun_of == RUN.name
    assert [(s.id, s.phase, s.reused_from) for s in started.status.steps] == [
        ("a", StepPhase.SUCCEEDED, RUN.name)
    ]
    # The rerun's first pass tells its start and what it reruns in one Event.
    told = {note["reason"]: note["message"] for note in world.kube.objects(NOTES, NS)}
    assert f"rerun of run {RUN.name} from step 'b'" in told["RunStarted"] and "Rerun" in told


def test_a_rerun_created_by_a_pass_whose_save_was_lost_is_not_created_twice() -> None:
    world = World()
    an_ended_run_asked_to_rerun(world)
    world.reconcile()
    # As if the save had been lost: the request is decided again; the same name exists already.
    world.kube.touch(RUNS, NS, RUN.name, status=ENDED)
    world.reconcile()
    assert world.run(RUN.name).status.reruns == [RERUN.name]
    assert len([o for o in world.kube.objects(RUNS, NS) if o["metadata"]["name"] == RERUN.name]) == 1
