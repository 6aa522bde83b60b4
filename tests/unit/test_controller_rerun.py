"""A rerun through the run reconciler (on the in-memory API stand-in): the original lists it, once."""

from __future__ import annotations

import copy

from test_controller_reconcilers import NS, RUN, World, a_run

from kubestep.api.run import RerunSpec, ReusedStep, StepPhase
from kubestep.controller.context import Key
from kubestep.controller.kube import RUNS, Conflict

RERUN = Key("run", NS, "contacts-run-rerun-1")


def a_rerun(world: World) -> None:
    """The original run (finished) and a rerun of it as `kubestep rerun` creates it: no status yet."""
    a_run(world)
    original = world.kube.peek(RUNS, NS, RUN.name)
    assert original is not None
    world.kube.touch(RUNS, NS, RUN.name, status={"phase": "Failed", "reruns": ["an-earlier-rerun"]})
    rerun = copy.deepcopy(original)
    rerun["metadata"] = {"name": RERUN.name, "namespace": NS}
    rerun.pop("status", None)
    spec = RerunSpec(of=RUN.name, from_step="b", steps=[ReusedStep(id="a", name="a", output={"n": 1})])
    rerun["spec"]["rerun"] = spec.to_dict()
    world.kube.put(RUNS, rerun)


def test_a_rerun_is_listed_in_the_original_and_starts_from_the_reused_steps() -> None:
    world = World()
    a_rerun(world)
    world.reconcile(RERUN)
    assert world.run(RUN.name).status.reruns == ["an-earlier-rerun", RERUN.name]
    new = world.run(RERUN.name)
    assert new.status.rerun_of == RUN.name
    assert [(s.id, s.phase, s.reused_from) for s in new.status.steps] == [
        ("a", StepPhase.SUCCEEDED, RUN.name)
    ]
    assert "RerunStarted" in world.notes()
    # Linked before the rerun's own status is saved; a pass deciding the start again links nothing twice.
    methods = [c.method for c in world.kube.writes() if c.method != "post_event"]
    assert methods[:2] == ["replace_status", "replace_status"]
    world.kube.touch(RUNS, NS, RERUN.name, status={})
    world.reconcile(RERUN)
    assert world.run(RUN.name).status.reruns == ["an-earlier-rerun", RERUN.name]


def test_a_conflict_linking_the_original_leaves_the_rerun_unstarted_and_is_tried_again() -> None:
    world = World()
    a_rerun(world)
    world.kube.fail("replace_status", Conflict("the object has been modified", 409), times=1)
    result = world.reconcile(RERUN)
    assert result.requeue or result.error is not None
    assert world.run(RERUN.name).status.started_at is None
    world.reconcile(RERUN)
    assert world.run(RUN.name).status.reruns == ["an-earlier-rerun", RERUN.name]
