"""Jobs run on the process node, driven by the real Job controller and garbage collector."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from kubecp.cluster import ControlPlane
from kubecp.testing import python_job, wait_for


def create(control_plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> None:
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def job_condition(api_client: Any, namespace: str, name: str) -> str | None:
    job = client.BatchV1Api(api_client).read_namespaced_job_status(name, namespace)
    for condition in (job.status and job.status.conditions) or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition.type
    return None


def job_pods(api_client: Any, namespace: str, job: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=f"job-name={job}")
    return list(pods.items)


def test_job_whose_pod_exits_0_completes(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    create(control_plane, namespace, python_job("ok", "print('all good')"))

    assert wait_for(lambda: job_condition(api_client, namespace, "ok"), what="job finished") == "Complete"
    [pod] = job_pods(api_client, namespace, "ok")
    assert pod.status is not None and pod.status.phase == "Succeeded"
    [status] = pod.status.container_statuses or []
    assert status.state is not None and status.state.terminated is not None
    assert status.state.terminated.exit_code == 0
    assert status.state.terminated.reason == "Completed"


def test_failing_job_fails_and_its_pod_shows_exit_code_and_message(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    code = (
        "import sys\n"
        "open('/dev/termination-log', 'w').write('could not reach the moon')\n"
        "print('trying hard')\n"
        "sys.exit(1)\n"
    )
    create(control_plane, namespace, python_job("doomed", code, backoff_limit=0))

    assert wait_for(lambda: job_condition(api_client, namespace, "doomed"), what="job finished") == "Failed"
    [pod] = job_pods(api_client, namespace, "doomed")
    assert pod.status is not None and pod.status.phase == "Failed"
    [status] = pod.status.container_statuses or []
    terminated = status.state and status.state.terminated
    assert terminated is not None
    assert terminated.exit_code == 1
    assert terminated.reason == "Error"
    assert terminated.message == "could not reach the moon"
    assert terminated.started_at is not None and terminated.finished_at is not None


def test_kubectl_logs_returns_what_the_pod_printed(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    # stdout and stderr are separate pipes (as with a runtime): pause so their order is certain.
    code = (
        "import sys, time\n"
        "print('line one')\n"
        "print('line two', flush=True)\n"
        "time.sleep(0.3)\n"
        "print('oops', file=sys.stderr)\n"
    )
    create(control_plane, namespace, python_job("talker", code))
    wait_for(lambda: job_condition(api_client, namespace, "talker"), what="job finished")

    logs = control_plane.kubectl("logs", "-n", namespace, "job/talker").stdout
    assert logs.splitlines() == ["line one", "line two", "oops"]
    tail = control_plane.kubectl("logs", "-n", namespace, "job/talker", "--tail=1").stdout
    assert tail == "oops\n"
    stamped = control_plane.kubectl("logs", "-n", namespace, "job/talker", "--timestamps").stdout
    assert stamped.splitlines()[0].endswith("Z line one")
    limited = control_plane.kubectl("logs", "-n", namespace, "job/talker", "--limit-bytes=6").stdout
    assert limited == "line o"
    recent = control_plane.kubectl("logs", "-n", namespace, "job/talker", "--since=1h").stdout
    assert recent == logs


def test_kubectl_logs_follows_a_running_pod(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    code = "import time\nfor i in range(3):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.3)\n"
    create(control_plane, namespace, python_job("ticker", code))
    wait_for(lambda: [p for p in job_pods(api_client, namespace, "ticker") if p.status.phase != "Pending"])

    followed = control_plane.kubectl("logs", "-n", namespace, "job/ticker", "--follow").stdout
    assert followed.splitlines() == ["tick 0", "tick 1", "tick 2"]


def test_foreground_deletion_of_a_job_removes_its_pods(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    create(control_plane, namespace, python_job("sleeper", "import time; time.sleep(600)"))
    wait_for(
        lambda: [p for p in job_pods(api_client, namespace, "sleeper") if p.status.phase == "Running"],
        what="pod running",
    )

    client.BatchV1Api(api_client).delete_namespaced_job(
        "sleeper", namespace, body=client.V1DeleteOptions(propagation_policy="Foreground")
    )

    def job_gone() -> bool:
        jobs = client.BatchV1Api(api_client).list_namespaced_job(namespace)
        return not jobs.items

    wait_for(job_gone, timeout=60, what="job deleted")
    assert job_pods(api_client, namespace, "sleeper") == []
