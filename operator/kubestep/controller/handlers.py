"""The kopf layer: watches, indices and the workers. Handlers only enqueue keys; reconcilers decide.

Nothing here writes kopf's own bookkeeping into objects: there are no change-detecting handlers, so no
``kopf.zalando.org`` annotations and nothing under ``status`` that the structural schemas would prune.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from kubestep.api.base import GROUP, VERSION
from kubestep.api.event import Event
from kubestep.controller import builders, cache, observe, runs
from kubestep.controller.context import Controller, Key
from kubestep.controller.kube import FIELD_MANAGER, Kube, load_configuration
from kubestep.controller.leader import ElectionConfig, LeaderElector
from kubestep.controller.metrics import METRICS
from kubestep.controller.queue import WorkQueue
from kubestep.controller.reconcile import reconcile
from kubestep.engine import admission
from kubestep.engine.lifecycle import RUN_FAILED

log = logging.getLogger(__name__)

#: Reconciles running at once.
WORKERS = 8
#: Phases of a finished run (not kept in the watch cache).
_FINISHED = ("Succeeded", "Failed", "Cancelled")


class KopfIndices:
    """The :class:`~kubestep.controller.context.Indices` the reconcilers read, backed by kopf indices."""

    def __init__(self, indices: dict[str, kopf.Index[Any, Any]]) -> None:
        self._indices = indices

    def _get(self, index: str, key: Hashable) -> list[Any]:
        store = self._indices[index].get(key)
        return list(store) if store is not None else []

    def waiting_runs(self, namespace: str, event: str) -> list[str]:
        return self._get("waiting_runs", (namespace, event))

    def events_named(self, namespace: str, event: str, event_id: str | None = None) -> list[Event]:
        events = []
        for body in self._get("events_by_name", (namespace, event)):
            if event_id is not None and body["spec"].get("id") != event_id:
                continue  # read before validating: a busy event name has thousands within its window
            try:
                events.append(Event.model_validate(body))
            except ValidationError:
                continue  # its own reconcile says what is wrong with it; it resumes no one
        return events

    def run_phases(self, namespace: str, workflow: str) -> list[str]:
        return self._get("runs_by_workflow", (namespace, workflow))

    def resumed_by(self, namespace: str, event: str) -> list[tuple[str, str]]:
        return self._get("resumed_by", (namespace, event))

    def cancellable_runs(self, namespace: str, event: str) -> list[str]:
        return self._get("cancellable_runs", (namespace, event))

    def run_jobs(self, namespace: str, run: str) -> list[str]:
        return self._get("jobs_by_run", (namespace, run))

    def listening_workflows(self, namespace: str, event: str) -> list[str]:
        return self._get("workflows_by_event", (namespace, event))

    def run(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(self._get("run_cache", (namespace, name))), None)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(self._get("job_cache", (namespace, name))), None)

    def workflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(self._get("workflow_cache", (namespace, name))), None)

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return self._get("pod_cache", (namespace, job))


#: The kopf indices :class:`KopfIndices` reads (each registered by :func:`register`).
READ_INDICES = (
    "waiting_runs",
    "runs_by_workflow",
    "resumed_by",
    "events_by_name",
    "run_cache",
    "job_cache",
    "pod_cache",
    "workflow_cache",
    "cancellable_runs",
    "jobs_by_run",
    "workflows_by_event",
)

#: Every object a reconciler owns, by kind: all of them are queued when this operator starts leading.
KEY_INDICES = {"run": "run_keys", "event": "event_keys", "workflow": "workflow_keys"}


def register(
    registry: kopf.OperatorRegistry,
    dedupe_window: timedelta,
    election: ElectionConfig | None = None,
    field_manager: str = FIELD_MANAGER,
) -> None:
    """Register every handler of the operator in ``registry``.

    With ``election``, the watches and indices run at once but the workers only while this process
    holds the leader Lease (see :mod:`kubestep.controller.leader`).
    """
    on = {"registry": registry}

    # Indices -----------------------------------------------------------------------------------------

    @kopf.index(GROUP, VERSION, "workflowruns", id="waiting_runs", **on)  # type: ignore[arg-type]
    def waiting_runs(namespace: str, name: str, status: dict[str, Any], **_: Any) -> dict[Hashable, str]:
        return {
            (namespace, step["wait"]["event"]): name
            for step in status.get("steps") or []
            if step.get("phase") == "Waiting" and step.get("wait")
        }

    @kopf.index(GROUP, VERSION, "workflowruns", id="cancellable_runs", **on)  # type: ignore[arg-type]
    def cancellable_runs(
        namespace: str, name: str, spec: dict[str, Any], status: dict[str, Any], **_: Any
    ) -> dict[Hashable, str]:
        # Runs in flight by the events of their `spec.cancelOn`: such an Event queues them at once.
        if status.get("phase") in ("Succeeded", "Failed", "Cancelled"):
            return {}
        return {
            (namespace, rule.get("event", "")): name
            for rule in spec.get("workflow", {}).get("cancelOn") or []
        }

    @kopf.index(GROUP, VERSION, "workflowruns", id="runs_by_workflow", **on)  # type: ignore[arg-type]
    def runs_by_workflow(
        namespace: str, spec: dict[str, Any], status: dict[str, Any], **_: Any
    ) -> dict[Hashable, str]:
        phase = admission.counted_phase(status)
        return {(namespace, spec.get("workflowRef", {}).get("name", "")): phase}

    @kopf.index(GROUP, VERSION, "workflowruns", id="resumed_by", **on)  # type: ignore[arg-type]
    def resumed_by(
        namespace: str, name: str, spec: dict[str, Any], status: dict[str, Any], **_: Any
    ) -> dict[Hashable, tuple[str, str]]:
        workflow = spec.get("workflowRef", {}).get("name", "")
        return {
            (namespace, step["wait"]["matched"]): (workflow, name)
            for step in status.get("steps") or []
            if (step.get("wait") or {}).get("matched")
        }

    @kopf.index(GROUP, VERSION, "events", id="events_by_name", **on)  # type: ignore[arg-type]
    def events_by_name(
        namespace: str, body: kopf.Body, spec: dict[str, Any], status: dict[str, Any], **_: Any
    ) -> dict[Hashable, dict[str, Any]]:
        meta = body["metadata"]
        slim = {k: meta.get(k) for k in ("name", "namespace", "uid", "creationTimestamp")}
        # The runs it started: its id stays a duplicate's for the dedupe window even if those runs are gone;
        # whether it was handled (collection keeps an Event until those sharing its id are).
        conditions = status.get("conditions") or []
        handled = [{"type": c.get("type", ""), "status": c.get("status", "")} for c in conditions]
        started = {"started": list(status.get("started") or []), "conditions": handled}
        return {(namespace, spec.get("name", "")): {"metadata": slim, "spec": dict(spec), "status": started}}

    # Every key, so that a new leader queues everything: kopf drops an object's entry when it is deleted.
    @kopf.index(GROUP, VERSION, "workflowruns", id="run_keys", **on)  # type: ignore[arg-type]
    def run_keys(namespace: str, name: str, **_: Any) -> dict[Hashable, tuple[str, str]]:
        return {"run": (namespace, name)}

    @kopf.index(GROUP, VERSION, "events", id="event_keys", **on)  # type: ignore[arg-type]
    def event_keys(namespace: str, name: str, **_: Any) -> dict[Hashable, tuple[str, str]]:
        return {"event": (namespace, name)}

    @kopf.index(GROUP, VERSION, "workflows", id="workflow_keys", **on)  # type: ignore[arg-type]
    def workflow_keys(namespace: str, name: str, **_: Any) -> dict[Hashable, tuple[str, str]]:
        return {"workflow": (namespace, name)}

    # The watch cache (`kubestep.controller.cache`): what a pass reads instead of GETs. Finished runs are
    # not kept (rarely read again, and most of the memory); Jobs and pods only as far as a pass reads them.
    @kopf.index(GROUP, VERSION, "workflowruns", id="run_cache", **on)  # type: ignore[arg-type]
    def run_cache(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Hashable, dict[str, Any]]:
        if (body.get("status") or {}).get("phase") in _FINISHED:
            return {}
        return {
            (namespace, name): {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")}
        }

    # Workflows are few and small, and read by every admission and count pass: kept whole.
    @kopf.index(GROUP, VERSION, "workflows", id="workflow_cache", **on)  # type: ignore[arg-type]
    def workflow_cache(
        namespace: str, name: str, body: kopf.Body, **_: Any
    ) -> dict[Hashable, dict[str, Any]]:
        return {
            (namespace, name): {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")}
        }

    @kopf.index(GROUP, VERSION, "workflows", id="workflows_by_event", **on)  # type: ignore[arg-type]
    def workflows_by_event(namespace: str, name: str, spec: dict[str, Any], **_: Any) -> dict[Hashable, str]:
        # Whether a run's end is worth publishing (`engine.lifecycle.end_event`): who could receive it.
        events = {t["event"] for t in spec.get("triggers") or [] if isinstance(t, dict) and t.get("event")}
        if spec.get("onFailure"):
            events.add(RUN_FAILED)
        return {(namespace, event): name for event in events}

    managed = {"labels": {builders.LABEL_MANAGED: builders.MANAGER}}

    @kopf.index("batch", "v1", "jobs", id="job_cache", **managed, **on)  # type: ignore[arg-type]
    def job_cache(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Hashable, dict[str, Any]]:
        meta = body["metadata"]
        keep = ("name", "namespace", "creationTimestamp", "ownerReferences", "labels", "resourceVersion")
        return {
            (namespace, name): {
                "metadata": {k: meta.get(k) for k in keep},
                "status": body.get("status") or {},
            }
        }

    @kopf.index("batch", "v1", "jobs", id="jobs_by_run", **managed, **on)  # type: ignore[arg-type]
    def jobs_by_run(namespace: str, name: str, labels: dict[str, str], **_: Any) -> dict[Hashable, str]:
        # Whether a finished run still has Jobs to collect, without a list call.
        run = labels.get(builders.LABEL_RUN)
        return {(namespace, run): name} if run else {}

    @kopf.index("", "v1", "pods", id="pod_cache", **managed, **on)  # type: ignore[arg-type]
    def pod_cache(
        namespace: str, body: kopf.Body, labels: dict[str, str], **_: Any
    ) -> dict[Hashable, dict[str, Any]]:
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        if not job:
            return {}
        meta = body["metadata"]
        keep = ("name", "creationTimestamp", "deletionTimestamp")
        return {
            (namespace, job): {"metadata": {k: meta.get(k) for k in keep}, "status": body.get("status") or {}}
        }

    @kopf.on.login(**on)  # type: ignore[arg-type]
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as the API module: in-cluster ServiceAccount, else the kubeconfig.
        return kopf.login_via_client(**kwargs)

    # Startup and the workers ---------------------------------------------------------------------------

    @kopf.on.startup(**on)  # type: ignore[arg-type]
    async def start(memo: kopf.Memo, settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        load_configuration()
        indices = {name: kwargs[name] for name in READ_INDICES}
        queue = WorkQueue()
        METRICS.track_queue(lambda: queue.depth)
        elector: LeaderElector | None = None
        if election is not None:

            async def lead() -> None:
                for kind, index in KEY_INDICES.items():
                    for namespace, name in list(kwargs[index].get(kind) or []):
                        queue.add(Key(kind, namespace, name))
                        if kind == "workflow":
                            queue.add(Key("admission", namespace, name))
                _start_workers(memo)

            async def stand_by() -> None:
                await _stop_workers(memo)

            # Its own connection and thread: a renewal never waits behind the reconcilers' requests.
            leases = Kube(field_manager=field_manager, executor=ThreadPoolExecutor(1, "lease"))
            elector = LeaderElector(election, leases, on_started=lead, on_stopped=stand_by)
            memo["elector"] = elector
            log.info(
                "leader election on: Lease %s/%s, identity %s; reconciling only while leading",
                election.namespace,
                election.name,
                election.identity,
            )
        kube = Kube(may_write=elector.may_write if elector is not None else None, field_manager=field_manager)
        memo["controller"] = Controller(kube, KopfIndices(indices), dedupe_window=dedupe_window)
        memo["queue"] = queue
        if elector is None:
            _start_workers(memo)
        else:
            memo["election"] = asyncio.create_task(elector.run())

    @kopf.on.cleanup(**on)  # type: ignore[arg-type]
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        campaign: asyncio.Task[None] | None = memo.get("election")
        if campaign is not None:
            campaign.cancel()
            await asyncio.gather(campaign, return_exceptions=True)
        await _stop_workers(memo)
        # Only once nothing of this process writes: a successor may start the moment it is released.
        if memo.get("elector") is not None:
            await memo["elector"].release()
        if "queue" in memo:
            memo["queue"].close()

    if election is not None:

        @kopf.on.probe(id="leader", **on)  # type: ignore[arg-type]
        def leadership(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
            elector: LeaderElector | None = memo.get("elector")
            return elector.state() if elector is not None else {}

    # Watches: every change of a kubestep object, a step Job or an Event only enqueues a key -----------

    @kopf.on.event(GROUP, VERSION, "workflowruns", **on)  # type: ignore[arg-type]
    def run_changed(
        event: dict[str, Any],
        namespace: str,
        name: str,
        spec: dict[str, Any],
        status: dict[str, Any],
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        queue = _queue(memo)
        if queue is None:
            return
        controller: Controller | None = memo.get("controller")
        version = (event.get("object") or {}).get("metadata", {}).get("resourceVersion")
        # A version this process wrote (or read) itself was decided from already: its pass set the timers
        # and made the writes it needs, and every other change it waits for comes with its own watch event.
        # So was one it wrote a later version under, whose event follows.
        own = (
            controller is not None
            and bool(version)
            and cache.watched_run(controller, namespace, name, version)
        )
        gone = event.get("type") == "DELETED"
        if controller is not None:
            cache.run_presence(controller, namespace, name, gone)
            if gone:
                runs.forget(controller, namespace, name)
        if not gone and not own:
            queue.add(Key("run", namespace, name), later=_settled(spec, status))
        queue.add(Key("workflow", namespace, spec.get("workflowRef", {}).get("name", "")))
        # A run that wants a slot, or frees one (its Job ended, it ended, it was deleted): admission again.
        queue.add(Key("admission", namespace, spec.get("workflowRef", {}).get("name", "")))
        parent = spec.get("parent") or {}
        if parent.get("run"):
            queue.add(Key("run", namespace, parent["run"]))
        # Events whose waits this run matched list it in `status.resumed`, read from the index just updated.
        for step in status.get("steps") or []:
            matched = (step.get("wait") or {}).get("matched")
            if matched:
                queue.add(Key("event", namespace, matched))

    @kopf.on.event("batch", "v1", "jobs", labels={builders.LABEL_MANAGED: builders.MANAGER}, **on)  # type: ignore[arg-type]
    def job_changed(
        event: dict[str, Any],
        namespace: str,
        meta: dict[str, Any],
        status: dict[str, Any],
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        queue = _queue(memo)
        controller: Controller | None = memo.get("controller")
        # Only an ended or vanishing Job can change its run: its creation and its pod's progress cannot (a pod
        # that ends, or is held up on its way to running, queues its run through the pod watch).
        gone = event.get("type") == "DELETED" or meta.get("deletionTimestamp")
        if not gone and observe.job_finished({"status": status}) is None:
            return
        for owner in meta.get("ownerReferences") or []:
            if queue is None or owner.get("kind") != "WorkflowRun":
                continue
            run = owner["name"]
            if (
                gone
                and controller is not None
                and not cache.execution_gone_needs_pass(controller, namespace, run)
            ):
                continue  # its run was deleted, or is finished and collecting its Jobs
            queue.add(Key("run", namespace, run))

    @kopf.on.event("", "v1", "pods", labels={builders.LABEL_MANAGED: builders.MANAGER}, **on)  # type: ignore[arg-type]
    async def pod_changed(
        event: dict[str, Any],
        namespace: str,
        body: kopf.Body,
        labels: dict[str, str],
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        controller: Controller | None = memo.get("controller")
        queue = _queue(memo)
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        run = labels.get(builders.LABEL_RUN)
        if controller is None or queue is None or not job or not run:
            return
        meta = body["metadata"]
        gone = event.get("type") == "DELETED" or meta.get("deletionTimestamp")
        if gone and not cache.execution_gone_needs_pass(controller, namespace, run):
            return  # nothing of it is needed: its run was deleted, or is finished and collecting its Jobs
        if not gone:
            # A pod held up on its way to running (ErrImagePull, ...) changes nothing in its Job: look at its
            # run now, to show why. A pod that ended is acted on at once, without waiting
            # for the Job controller to mark its Job finished (seconds on a busy cluster).
            status = {"status": body.get("status") or {}}
            if observe.held_up(status) or observe.terminated_state(status):
                queue.add(Key("run", namespace, run))
            return
        # Remember how it ended: once deleted, the pod (and the step its report named) is gone. (Async: with
        # no hop to a thread, a pass seldom sees the pod gone from the watch cache before it is remembered.)
        pod = {
            "metadata": {k: meta.get(k) for k in ("name", "creationTimestamp", "deletionTimestamp")},
            "status": {k: v for k, v in (body.get("status") or {}).items() if k != "initContainerStatuses"},
        }
        runs.remember_pod_ending(controller, namespace, run, job, pod)
        queue.add(Key("run", namespace, run))

    @kopf.on.event(GROUP, VERSION, "events", **on)  # type: ignore[arg-type]
    def event_changed(
        event: dict[str, Any], namespace: str, name: str, spec: dict[str, Any], memo: kopf.Memo, **kwargs: Any
    ) -> None:
        queue = _queue(memo)
        controller: Controller | None = memo.get("controller")
        gone = event.get("type") == "DELETED"
        version = (event.get("object") or {}).get("metadata", {}).get("resourceVersion")
        needs_pass = controller is None or cache.watched_event(controller, namespace, name, version, gone)
        if queue is None or gone:
            return
        if needs_pass:
            queue.add(Key("event", namespace, name))
        store = kwargs["waiting_runs"].get((namespace, spec.get("name", "")))
        for run in list(store or []):
            queue.add(Key("run", namespace, run))
        for run in list(kwargs["cancellable_runs"].get((namespace, spec.get("name", ""))) or []):
            queue.add(Key("run", namespace, run))

    @kopf.on.event(GROUP, VERSION, "workflows", **on)  # type: ignore[arg-type]
    def workflow_changed(event: dict[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        queue = _queue(memo)
        if queue is not None and event.get("type") != "DELETED":
            queue.add(Key("workflow", namespace, name))
            queue.add(Key("admission", namespace, name))  # a limit raised frees slots


def _start_workers(memo: kopf.Memo) -> None:
    controller: Controller = memo["controller"]
    queue: WorkQueue = memo["queue"]
    memo["workers"] = [
        asyncio.create_task(queue.work(lambda key: reconcile(controller, key))) for _ in range(WORKERS)
    ]


async def _stop_workers(memo: kopf.Memo) -> None:
    """Cancel the workers, and with them every reconcile in flight; a new leader queues every key again."""
    workers: list[asyncio.Task[None]] = memo.pop("workers", [])
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)


def _settled(spec: dict[str, Any], status: dict[str, Any]) -> bool:
    """A finished run whose end is announced and whose reruns are started: its pass can wait for live work
    (after a restart every run is listed, and the finished ones may be thousands)."""
    return (
        status.get("phase") in _FINISHED
        and status.get("announced") is not False  # None: it publishes no end Event
        and len(spec.get("rerunRequests") or []) <= int(status.get("rerunRequestsHandled") or 0)
    )


def _queue(memo: kopf.Memo) -> WorkQueue | None:
    queue: WorkQueue | None = memo.get("queue")
    return queue
