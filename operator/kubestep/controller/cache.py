"""Read runs, step Jobs and their pods from the watch cache, and from the API only when it may be behind.

The watches stream every change of these objects anyway; reading them again with a GET per pass cost
the operator most of its requests. A cache can lag, never lie about the past: it may not have a Job
created a moment ago, or may still show a Job running whose pod has ended. Each read here therefore
goes to the API server whenever the cached copy cannot be trusted for the decision at hand:

- a Job missing from the cache is read from the API (a lagging cache is never taken for a deleted Job);
- a finished Job whose cached pod shows no end yet has its pods listed from the API (the pod watch may
  be behind the Job watch, and a pod without an end would read as one the cluster took away);
- a run is read from the cache only at the newest ``resourceVersion`` this process has seen of it
  (read or written). Until the watch brings back a version this process wrote, the run as written is that
  newest version (the answer to the write), also while the watch brings versions this process wrote a
  later one under (they need no pass); any other cached version may be older, so the run is read from
  the API. The same
  holds for a Workflow whose status is to be written; one only read for its spec (admission) is taken
  from the cache as it is: a change of the spec queues that pass again once the watch has it.

A cached Job still running that has in fact ended is harmless: its watch event queues the run again.
"""

from __future__ import annotations

from datetime import timedelta

from kubestep.controller import builders, observe
from kubestep.controller.context import Controller
from kubestep.controller.kube import RUNS, WORKFLOWS, NotFound, Obj

#: How long the name of a run the watch told was deleted is remembered: far longer than its Jobs and pods
#: take to go with it.
GONE_FOR = timedelta(minutes=10)


async def run(ctl: Controller, namespace: str, name: str) -> Obj:
    """The run, from the cache if it is at the newest version seen, else from the API (NotFound if gone)."""
    cached = ctl.indices.run(namespace, name)
    newest = ctl.run_versions.get((namespace, name))
    if cached is not None and newest is not None and cached["metadata"].get("resourceVersion") == newest:
        return cached
    written = ctl.runs_written.get((namespace, name))
    if written is not None and newest is not None and written["metadata"].get("resourceVersion") == newest:
        return written  # the watch has not brought this process's own write back yet
    if cached is None and (namespace, name) in ctl.runs_gone:
        # The watch told of its deletion, and of nothing since (a run created again under the name is
        # told of before any pass of it).
        raise NotFound(f"workflowrun {namespace}/{name} was deleted")
    fresh = await ctl.kube.get(RUNS, namespace, name)
    saw_run(ctl, fresh)
    return fresh


async def workflow(ctl: Controller, namespace: str, name: str, to_write: bool = False) -> Obj:
    """The Workflow, from the cache unless ``to_write`` and the cached copy is not the newest version seen
    (NotFound if gone)."""
    cached = ctl.indices.workflow(namespace, name)
    newest = ctl.workflow_versions.get((namespace, name))
    if cached is not None and (
        not to_write or (newest is not None and cached["metadata"].get("resourceVersion") == newest)
    ):
        return cached
    fresh = await ctl.kube.get(WORKFLOWS, namespace, name)
    saw_workflow(ctl, fresh)
    return fresh


def saw_workflow(ctl: Controller, obj: Obj) -> None:
    """Note the version of a Workflow just read from or written to the API."""
    meta = obj.get("metadata") or {}
    if meta.get("resourceVersion"):
        ctl.workflow_versions[(meta["namespace"], meta["name"])] = str(meta["resourceVersion"])


def forget_workflow(ctl: Controller, namespace: str, name: str) -> None:
    """Drop what is known of a Workflow that is gone or changed meanwhile."""
    ctl.workflow_versions.pop((namespace, name), None)


def saw_run(
    ctl: Controller, obj: Obj, written: bool = False, decided: bool = False, replaced: Obj | None = None
) -> None:
    """Note the version of a run just read from or written to the API: the newest this process knows.

    A run ``written`` (the API server's answer to the write) is kept until its watch brings that version
    back (:func:`watched_run`), so that a pass meanwhile reads it rather than the API. Every writer of
    runs in this process notes what it wrote, so a version written by another reconciler here (admission's
    grant) is never taken for an older one. ``decided``: the run reconciler decided from this version (it
    read it, or wrote it as its decision). ``replaced``: the run as read, when ``obj`` answers a write made
    only if the run was still at that version.
    """
    meta = obj.get("metadata") or {}
    if meta.get("resourceVersion"):
        key = (meta["namespace"], meta["name"])
        version = str(meta["resourceVersion"])
        base = str(((replaced or {}).get("metadata") or {}).get("resourceVersion") or "")
        if base and base != version:
            # The API server took a write made under version `base`: that one is older than this, for sure.
            # (Answers of several reconcilers may be noted here out of order: their order proves nothing.)
            ctl.run_superseded.setdefault(key, set()).add(base)
        ctl.run_versions[key] = version
        if written:
            ctl.runs_written[key] = obj
        else:
            ctl.runs_written.pop(key, None)
        if decided:
            deciding_run(ctl, obj)


def deciding_run(ctl: Controller, obj: Obj) -> None:
    """Note that a run pass decides from this version of the run (read or written by it)."""
    meta = obj.get("metadata") or {}
    if meta.get("resourceVersion"):
        ctl.run_decided[(meta["namespace"], meta["name"])] = str(meta["resourceVersion"])


def watched_run(ctl: Controller, namespace: str, name: str, version: str) -> bool:
    """Note a version of a run its watch brought (the watch cache has it now); True if its watch event
    needs no pass: a run pass decided from that very version already (read it or wrote it), or this
    process wrote a later version under it (whatever changed in it, the writer saw), whose own watch event
    follows.

    A version another reconciler of this process wrote (admission's grant) does need one.
    """
    key = (namespace, name)
    superseded = ctl.run_superseded.get(key)
    if superseded is not None and version in superseded:
        # A watch brings an object's versions in order: this process's later one is still to come. (A watch
        # that starts over lists the newest version instead, which is never one of these.) Meanwhile the
        # run as written stays the newest copy, read instead of the API.
        superseded.discard(version)
        return True
    # Whichever other version it is, the cache has it now: ours, or one the run reached after ours, or one
    # of someone else's before ours (which costs a read from the API).
    ctl.runs_written.pop(key, None)
    ctl.run_superseded.pop(key, None)
    return ctl.run_decided.get(key) == version


def wrote_event(ctl: Controller, obj: Obj) -> None:
    """Note an Event's status this process just wrote: the pass that wrote it made that version's pass."""
    meta = obj.get("metadata") or {}
    if meta.get("resourceVersion"):
        ctl.event_versions[(meta["namespace"], meta["name"])] = str(meta["resourceVersion"])


def watched_event(ctl: Controller, namespace: str, name: str, version: str | None, gone: bool) -> bool:
    """Note a version of an Event its watch brought; True if it needs a pass (it is not this process's
    own last write). A deleted Event is forgotten."""
    if gone:
        ctl.event_versions.pop((namespace, name), None)
        return False
    return not version or ctl.event_versions.get((namespace, name)) != version


def run_presence(ctl: Controller, namespace: str, name: str, gone: bool) -> None:
    """Note what the run watch told of a run: deleted (``gone``), or there (its name in use again)."""
    key = (namespace, name)
    ctl.runs_gone.pop(key, None)
    if not gone:
        return
    now = ctl.clock()
    while ctl.runs_gone:
        oldest, when = next(iter(ctl.runs_gone.items()))
        if when + GONE_FOR > now:
            break
        del ctl.runs_gone[oldest]
    ctl.runs_gone[key] = now
    forget_run(ctl, namespace, name)  # what it knew of its versions no longer applies


def execution_gone_needs_pass(ctl: Controller, namespace: str, run: str) -> bool:
    """Whether a step Job or pod going away needs a pass of its run ``run``.

    Not when the run itself was deleted (they go with it), nor when this process deleted the Jobs of the
    finished run (`kubestep.controller.gc`): that pass decided already, and what it waits for, the last of
    them gone, is noted here.
    """
    key = (namespace, run)
    if key in ctl.runs_gone:
        return False
    if key in ctl.jobs_deleted:
        if not ctl.indices.run_jobs(namespace, builders.run_label(run)):
            del ctl.jobs_deleted[key]
        return False
    return True


def forget_run(ctl: Controller, namespace: str, name: str) -> None:
    """Drop what is known of a run that is gone or finished."""
    ctl.run_versions.pop((namespace, name), None)
    ctl.run_superseded.pop((namespace, name), None)
    ctl.runs_written.pop((namespace, name), None)
    ctl.run_decided.pop((namespace, name), None)


async def job_and_pods(ctl: Controller, namespace: str, name: str) -> tuple[Obj | None, list[Obj]]:
    """A step Job (None if it does not exist) and its pods, read from the API where the cache may lag."""
    job = ctl.indices.job(namespace, name)
    if job is None:
        try:
            job = await ctl.kube.get_job(namespace, name)
        except NotFound:
            job = None
        return job, await ctl.kube.job_pods(namespace, name)
    pods = ctl.indices.job_pods(namespace, name)
    if observe.job_finished(job) is not None and not observe.terminated_state(observe.newest_pod(pods)):
        pods = await ctl.kube.job_pods(namespace, name)
    return job, pods
