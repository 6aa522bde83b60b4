"""A run keeps the image it started with: its first pod's digest is recorded and every later Job uses it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from test_controller_builders import make_run as make_cluster_run
from test_controller_builders import make_start
from test_engine import Sim, make_run, ok

from kubestep.api.report import Report, ReportKind, StepRef
from kubestep.api.workflow import ExecutionMode, ExecutionPolicy, StepPolicy
from kubestep.cli.render import timeline
from kubestep.controller import builders, observe
from kubestep.engine import ExitKind, Note
from kubestep.engine.images import by_digest, digest_of, pin, repository
from kubestep.engine.policy import PodOverrides

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def with_image(image: str, **spec: Any) -> Any:
    run = make_run()
    return run.model_copy(
        update={
            "spec": run.spec.model_copy(
                update={"workflow": run.spec.workflow.model_copy(update={"image": image, **spec})}
            )
        }
    )


def next_step(step_id: str, output: Any, following: str) -> Report:
    """A step's output, reported with the next step replay reached."""
    return ok(step_id, output).model_copy(
        update={"next": Report(kind=ReportKind.NEXT_STEP, step=StepRef(id=following, name=following))}
    )


# --- which reference pins a run ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "image_id", "pinned"),
    [
        # The workflow's repository at the digest its first pod ran.
        ("127.0.0.1:5000/team/app:latest", f"127.0.0.1:5000/team/app@{A}", f"127.0.0.1:5000/team/app@{A}"),
        ("registry.example:443/app:1.4", f"registry.example:443/app@{A}", f"registry.example:443/app@{A}"),
        ("registry.example:443/app", f"registry.example:443/app@{A}", f"registry.example:443/app@{A}"),
        # The runtime may normalise the name (docker.io/library/...): the workflow's own name is kept.
        ("python:3.12", f"docker.io/library/python@{A}", f"python@{A}"),
        ("ghcr.io/acme/app:v2", f"docker-pullable://ghcr.io/acme/app@{A}", f"ghcr.io/acme/app@{A}"),
        # Given by digest already: kept as written (with its tag, if any).
        (f"ghcr.io/acme/app@{B}", f"ghcr.io/acme/app@{B}", f"ghcr.io/acme/app@{B}"),
        (f"ghcr.io/acme/app:v2@{B}", f"ghcr.io/acme/app@{B}", f"ghcr.io/acme/app:v2@{B}"),
        # Nothing usable reported: no pin (an image loaded into the node has only its config's id).
        ("ghcr.io/acme/app:v2", A, None),
        ("ghcr.io/acme/app:v2", "ghcr.io/acme/app:v2", None),
        ("ghcr.io/acme/app:v2", "", None),
        ("ghcr.io/acme/app:v2", "ghcr.io/acme/app@sha256:short", None),
    ],
)
def test_a_run_is_pinned_to_the_workflows_repository_at_the_digest_its_first_pod_ran(
    image: str, image_id: str, pinned: str | None
) -> None:
    assert pin(image, image_id) == pinned


@pytest.mark.parametrize(
    ("image", "repo", "digest"),
    [
        ("app", "app", False),
        ("app:1", "app", False),
        ("localhost:5000/app", "localhost:5000/app", False),
        ("localhost:5000/a/b:1", "localhost:5000/a/b", False),
        (f"localhost:5000/a/b:1@{A}", "localhost:5000/a/b", True),
        (f"[::1]:5000/app@{A}", "[::1]:5000/app", True),
    ],
)
def test_repository_and_digest_of_a_reference(image: str, repo: str, digest: bool) -> None:
    assert repository(image) == repo
    assert by_digest(image) is digest
    assert digest_of(f"x/y@{A}") == A


# --- the decision ---------------------------------------------------------------------------------


def test_the_first_pods_digest_is_recorded_and_every_later_execution_uses_it() -> None:
    sim = Sim(with_image("127.0.0.1:5000/team/app:latest"))
    assert sim.only_start().image is None  # nothing ran yet: the tag as written
    sim.finish(next_step("a", 1, "b"), image_id=f"127.0.0.1:5000/team/app@{A}")
    assert sim.status.image == f"127.0.0.1:5000/team/app@{A}"
    assert sim.only_start().image == f"127.0.0.1:5000/team/app@{A}"
    notes = [n.reason for n in sim.decision.of(Note)]
    assert "ImagePinned" in notes
    # A later pod reporting another digest (it cannot, pinned; or a stale report) changes nothing.
    sim.finish(next_step("b", 2, "c"), image_id=f"127.0.0.1:5000/team/app@{B}")
    assert sim.status.image == f"127.0.0.1:5000/team/app@{A}"
    assert sim.only_start().image == f"127.0.0.1:5000/team/app@{A}"
    assert "ImagePinned" not in [n.reason for n in sim.decision.of(Note)]


def test_a_retry_of_the_first_step_uses_the_digest_its_failed_attempt_ran() -> None:
    sim = Sim(with_image("registry.example/app:1"))
    failed = ok("a", None).model_copy(update={"kind": ReportKind.STARTED})
    sim.finish(failed, kind=ExitKind.EXITED, exit_code=1, image_id=f"registry.example/app@{A}")
    assert sim.status.image == f"registry.example/app@{A}"
    step = sim.run.step("a")
    assert step is not None and step.next_attempt_at is not None
    sim.step(at=step.next_attempt_at)
    assert sim.only_start().image == f"registry.example/app@{A}"


def test_an_image_given_by_digest_is_used_as_written_without_a_note() -> None:
    image = f"registry.example/app:1@{B}"
    sim = Sim(with_image(image))
    sim.finish(next_step("a", 1, "b"), image_id=f"registry.example/app@{B}")
    assert sim.status.image == image
    assert sim.only_start().image == image
    assert "ImagePinned" not in [n.reason for n in sim.decision.of(Note)]


def test_without_a_reported_digest_the_run_goes_on_with_the_image_as_written() -> None:
    # Local runs (`kubestep run`) and runtimes that report no registry digest.
    sim = Sim(with_image("app:dev"))
    sim.finish(next_step("a", 1, "b"))
    assert sim.status.image is None
    assert sim.only_start().image is None
    sim.finish(next_step("b", 1, "c"), image_id="sha256:" + "c" * 64)
    assert sim.status.image is None


def test_chained_executions_and_step_pod_settings_keep_the_pin() -> None:
    chained = ExecutionPolicy(mode=ExecutionMode.CHAINED, max_steps_per_pod=2)
    heavy = {"heavy": StepPolicy.model_validate({"resources": {"limits": {"memory": "4Gi"}}})}
    sim = Sim(with_image("registry.example/app:1", execution=chained, steps=heavy))
    sim.finish(next_step("a", 1, "heavy"), image_id=f"registry.example/app@{A}")
    start = sim.only_start()
    assert start.image == f"registry.example/app@{A}"
    assert start.pod == PodOverrides(resources={"limits": {"memory": "4Gi"}})
    assert start.state.chain_steps == 2


# --- what reaches the cluster -------------------------------------------------------------------------


def test_the_job_runs_the_pinned_image_and_keeps_the_rest_of_its_pod() -> None:
    run = make_cluster_run()
    plain = builders.step_job(run, make_start())
    pinned = builders.step_job(run, dataclasses.replace(make_start(), image=f"registry.example/contacts@{A}"))
    assert plain["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/contacts:1"
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"] == f"registry.example/contacts@{A}"
    # The image is all that differs.
    pinned["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/contacts:1"
    assert pinned == plain


def test_an_ended_pods_image_id_reaches_the_engine() -> None:
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2026-03-01T12:00:00Z"},
        "status": {
            "containerStatuses": [
                {
                    "name": builders.CONTAINER,
                    "imageID": f"127.0.0.1:5000/app@{A}",
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": ""}},
                }
            ]
        },
    }
    ended = observe.outcome("j", job, pod)
    assert ended is not None and ended.image_id == f"127.0.0.1:5000/app@{A}"
    assert observe.image_id(None) == ""
    assert observe.outcome("j", None, None) is not None  # a vanished execution has none: no pin


def test_describe_shows_the_pinned_image_and_the_tag_it_came_from() -> None:
    sim = Sim(with_image("registry.example/app:1"))
    sim.finish(next_step("a", 1, "b"), image_id=f"registry.example/app@{A}")
    text = "\n".join(timeline(sim.run, T0))
    assert f"Image:      registry.example/app@{A} (pinned from registry.example/app:1)" in text
    unpinned = "\n".join(timeline(Sim(with_image("app:dev")).run, T0))
    assert "Image:" not in unpinned
