"""Run one pod on the process node, from binding to removal, reporting its status as the kubelet does."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubecp.node import status as st
from kubecp.node.api import Api, Obj, is_status, now, parse_time, rfc3339
from kubecp.node.containers import ContainerRun, Mount
from kubecp.node.environment import ConfigError, ImageStandIn, command_line, container_environment
from kubecp.node.logs import tail_text
from kubecp.node.volumes import VolumeError, prepare_volumes

log = logging.getLogger("kubecp.node")

COMPONENT = "kubelet"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# Limits of pkg/kubelet/container/runtime.go.
MAX_TERMINATION_MESSAGE = 4 * 1024
MAX_FALLBACK_LOG_BYTES = 2 * 1024
MAX_FALLBACK_LOG_LINES = 80
# The kubelet's crash-loop back-off.
BACKOFF_INITIAL, BACKOFF_MAX = 10.0, 300.0
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
TERMINAL = ("Succeeded", "Failed")


@dataclass
class NodeContext:
    """What every pod worker shares: the API, the node's identity, and how containers run."""

    api: Api
    node_name: str
    root: Path
    image: ImageStandIn
    python: str
    isolate: bool
    service_env: Mapping[str, str]
    allocatable: Mapping[str, str]


class PodGone(Exception):
    """The pod object no longer exists."""


@dataclass
class ContainerSlot:
    """A container of the pod spec and its runs (one per restart)."""

    spec: Obj
    init: bool = False
    runs: list[ContainerRun] = field(default_factory=list)
    restart_count: int = 0
    waiting_reason: str = "ContainerCreating"
    waiting_message: str | None = None
    backoff: float = BACKOFF_INITIAL
    restart_at: float | None = None
    #: State dicts (see status.py) of finished runs, computed once when they end.
    finished_states: dict[int, Obj] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Container name."""
        return str(self.spec["name"])

    @property
    def current(self) -> ContainerRun | None:
        """The latest run, if any."""
        return self.runs[-1] if self.runs else None

    def exit_code(self) -> int | None:
        """Exit code of the latest run, if it has ended."""
        run = self.current
        return run.exit.exit_code if run is not None and run.exit is not None else None

    def succeeded(self) -> bool:
        """Whether the latest run ended with 0."""
        return self.exit_code() == 0


class PodWorker:
    """Owns one pod on this node: its volumes, its container processes and its status."""

    def __init__(self, context: NodeContext, pod: Obj, on_done: Callable[[PodWorker], None]) -> None:
        self.context = context
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.directory = context.root / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.cond = threading.Condition()
        # Set with a notify, so that a change between two looks is not slept through.
        self._woken = False
        self.deleted = False
        self.shutting_down = False
        self.init_slots = [ContainerSlot(c, init=True) for c in pod["spec"].get("initContainers") or []]
        self.slots = [ContainerSlot(c) for c in pod["spec"]["containers"]]
        if self.init_slots:
            for slot in self.slots:
                slot.waiting_reason = "PodInitializing"
        self.conditions = st.ConditionMemory()
        self.phase: str = (pod.get("status") or {}).get("phase") or "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.volumes: dict[str, Path] | None = None
        self.start_time: str | None = (pod.get("status") or {}).get("startTime")
        self._last_report: str | None = None
        self._warned: set[str] = set()
        self._on_done = on_done
        self._thread = threading.Thread(
            target=self._main, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    # -- called from other threads ---------------------------------------------

    def start(self) -> None:
        """Start looking after the pod."""
        self._thread.start()

    def update(self, pod: Obj) -> None:
        """A newer version of the pod object (e.g. with a deletionTimestamp)."""
        with self.cond:
            self.pod = pod
            self._woken = True
            self.cond.notify_all()

    def object_deleted(self) -> None:
        """The pod object is gone from the API: stop at once."""
        with self.cond:
            self.deleted = True
            self._woken = True
            self.cond.notify_all()

    def shutdown(self) -> None:
        """The node is stopping: kill the containers, report nothing."""
        with self.cond:
            self.shutting_down = True
            self._woken = True
            self.cond.notify_all()

    def join(self, timeout: float) -> None:
        """Wait for the worker to finish."""
        self._thread.join(timeout)

    def find_log(self, container: str, previous: bool) -> tuple[Path, Callable[[], bool]] | None:
        """The log file of ``container`` (its latest run, or the one before) and whether it has ended."""
        for slot in [*self.init_slots, *self.slots]:
            if slot.name != container:
                continue
            runs = list(slot.runs)
            if previous:
                runs = runs[:-1]
            if not runs:
                return None
            run = runs[-1]
            return run.log_file, lambda run=run: run.exit is not None
        return None

    def container_names(self) -> list[str]:
        """Names of the pod's containers, init containers first."""
        return [slot.name for slot in [*self.init_slots, *self.slots]]

    # -- the worker thread ---------------------------------------------------------

    def _main(self) -> None:
        try:
            self._lifecycle()
        except PodGone:
            log.info("pod %s/%s is gone", self.namespace, self.name)
        except Exception:
            log.exception("pod %s/%s: worker failed", self.namespace, self.name)
        finally:
            self._kill_all()
            self._wait_for_exits(5.0)
            if self.deleted or self.shutting_down:
                shutil.rmtree(self.directory, ignore_errors=True)
            self._on_done(self)

    def _lifecycle(self) -> None:
        if self.phase in TERMINAL:
            # Finished before this node process knew it (e.g. the node restarted).
            self._await_deletion()
            return
        if self.start_time is None:
            self.start_time = rfc3339(now())
        self.directory.mkdir(parents=True, exist_ok=True)
        self._report()
        while self.volumes is None:
            if self._stop_reason():
                return self._finish(None)
            try:
                self.volumes = prepare_volumes(self.context.api, self.pod, self.directory / "volumes")
            except VolumeError as error:
                self._warn_once("FailedMount", f"MountVolume.SetUp failed: {error}")
                self._sleep(1.0)
            except Exception as error:
                if is_status(error, 403):
                    # The Node authorizer learns of a new binding a moment after it happens.
                    self._sleep(0.2)
                    continue
                raise
        self._report()
        while True:
            stop = self._stop_reason()
            if stop:
                return self._finish(stop)
            self._step()
            self._report()
            if self.phase in TERMINAL:
                break
            self._sleep(self._next_wakeup())
        self._report()
        self._await_deletion()

    def _stop_reason(self) -> str | None:
        with self.cond:
            if self.shutting_down or self.deleted:
                return "gone"
            if self.pod["metadata"].get("deletionTimestamp"):
                return "deleted"
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        started = self.start_time
        if (
            deadline is not None
            and started
            and (now() - parse_time(started)).total_seconds() >= float(deadline)
        ):
            return "deadline"
        return None

    def _finish(self, why: str | None) -> None:
        """End the pod because it was deleted, hit its deadline, or the node stops."""
        if why in (None, "gone"):
            return
        if why == "deadline":
            self.context.api.event(self.pod, "Pod", "DeadlineExceeded", DEADLINE_MESSAGE, COMPONENT)
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
            self._terminate(float(grace), deleting=False)
            self.phase, self.reason, self.message = "Failed", "DeadlineExceeded", DEADLINE_MESSAGE
            self._report()
            self._await_deletion()
            return
        # Deleted: SIGTERM, grace period, SIGKILL, a last status, then remove the object.
        self._terminate(self._deletion_grace(), deleting=True)
        started = [slot for slot in self.slots if slot.runs]
        all_ok = len(started) == len(self.slots) and all(slot.succeeded() for slot in self.slots)
        if self.phase not in TERMINAL:
            self.phase = "Succeeded" if all_ok else "Failed"
        self._report()
        self._delete_object()

    def _deletion_grace(self) -> float:
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def _terminate(self, grace: float, deleting: bool) -> None:
        running = [
            slot for slot in [*self.init_slots, *self.slots] if slot.current and slot.current.running()
        ]
        for slot in running:
            self.context.api.event(self.pod, "Pod", "Killing", f"Stopping container {slot.name}", COMPONENT)
            assert slot.current is not None
            slot.current.signal(signal.SIGTERM)
        for slot in [*self.init_slots, *self.slots]:
            slot.restart_at = None
        deadline = time.monotonic() + grace
        with self.cond:
            while any(s.current and s.current.running() for s in running) and not self.deleted:
                if deleting:
                    # A second delete may shorten the grace period.
                    deadline = min(deadline, time.monotonic() + self._deletion_grace())
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        self._kill_all()
        self._wait_for_exits(10.0)
        self._collect_exits()

    def _await_deletion(self) -> None:
        """A finished pod stays until it is deleted; then the kubelet removes it at once."""
        while True:
            with self.cond:
                if self.deleted or self.shutting_down:
                    return
                if self.pod["metadata"].get("deletionTimestamp"):
                    break
                self.cond.wait(5.0)
        self._delete_object()

    def _delete_object(self) -> None:
        try:
            self.context.api.delete_pod_now(self.namespace, self.name, self.uid)
        except Exception as error:
            if not is_status(error, 404, 409):
                raise
        # The object may linger on finalizers; the watch reports when it is gone.
        with self.cond:
            while not (self.deleted or self.shutting_down):
                self.cond.wait(5.0)

    def _sleep(self, seconds: float) -> None:
        with self.cond:
            if not self._woken:
                self.cond.wait(seconds)
            self._woken = False

    def _next_wakeup(self) -> float:
        wakeup = 5.0
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None and self.start_time is not None:
            left = float(deadline) - (now() - parse_time(self.start_time)).total_seconds()
            wakeup = min(wakeup, max(left, 0.0) + 0.01)
        for slot in [*self.init_slots, *self.slots]:
            if slot.restart_at is not None:
                wakeup = min(wakeup, max(slot.restart_at - time.monotonic(), 0.0) + 0.01)
        return wakeup

    # -- containers ----------------------------------------------------------------

    def _step(self) -> None:
        """Start, restart and account for containers; then work out the phase."""
        self._collect_exits()
        restart_policy = self.pod["spec"].get("restartPolicy", "Always")
        for slot in self.init_slots:
            if slot.succeeded():
                continue
            if slot.current is None:
                self._start(slot)
            elif slot.current.exit is not None:
                if restart_policy == "Never":
                    self.phase = "Failed"
                    return
                self._maybe_restart(slot)
            return
        for slot in self.slots:
            run = slot.current
            if run is None:
                self._start(slot)
            elif run.exit is not None:
                code = run.exit.exit_code
                if restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0):
                    self._maybe_restart(slot)
        self.phase = self._phase()

    def _phase(self) -> str:
        if any(not slot.runs for slot in self.slots):
            return "Pending"
        if any(
            slot.current and (slot.current.running() or slot.restart_at is not None) for slot in self.slots
        ):
            return "Running"
        return "Succeeded" if all(slot.succeeded() for slot in self.slots) else "Failed"

    def _maybe_restart(self, slot: ContainerSlot) -> None:
        if slot.restart_at is None:
            slot.restart_at = time.monotonic() + slot.backoff
            slot.waiting_reason = "CrashLoopBackOff"
            slot.waiting_message = (
                f"back-off {int(slot.backoff)}s restarting failed container={slot.name} "
                f"pod={self.name}_{self.namespace}({self.uid})"
            )
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)
        elif time.monotonic() >= slot.restart_at:
            slot.restart_at = None
            slot.restart_count += 1
            self._start(slot)

    def _start(self, slot: ContainerSlot) -> None:
        assert self.volumes is not None
        spec = slot.spec
        try:
            env = container_environment(
                self.context.api,
                self.pod,
                spec,
                self.context.image,
                self.context.service_env,
                self.context.allocatable,
            )
            argv = command_line(spec, env)
        except ConfigError as error:
            slot.waiting_reason, slot.waiting_message = "CreateContainerConfigError", str(error)
            self._warn_once("Failed", f"Error: {error}")
            return
        run_dir = self.directory / "containers" / slot.name / str(slot.restart_count)
        termination_log = run_dir / "termination-log"
        run_dir.mkdir(parents=True, exist_ok=True)
        termination_log.touch()
        # Whatever user the process runs as must be able to write it (as the kubelet makes it).
        termination_log.chmod(0o666)
        mounts = [
            Mount(termination_log, spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)
        ]
        for volume_mount in spec.get("volumeMounts") or []:
            source = self.volumes.get(volume_mount["name"])
            if source is None:
                continue
            if volume_mount.get("subPath"):
                source = source / volume_mount["subPath"]
            kind = self._volume_kind(volume_mount["name"])
            read_only = bool(volume_mount.get("readOnly")) or kind in (
                "secret",
                "configMap",
                "projected",
                "downwardAPI",
            )
            mounts.append(Mount(source, volume_mount["mountPath"], read_only))
        run = ContainerRun(
            name=slot.name,
            run_dir=run_dir,
            argv=argv,
            env=env,
            mounts=mounts,
            working_dir=spec.get("workingDir"),
            hostname=self.pod["spec"].get("hostname") or self.name,
            isolate=self.context.isolate,
            python=self.context.python,
            on_exit=self._container_exited,
        )
        slot.runs.append(run)
        slot.waiting_reason, slot.waiting_message = "ContainerCreating", None
        run.start()
        self.context.api.event(self.pod, "Pod", "Started", f"Started container {slot.name}", COMPONENT)

    def _volume_kind(self, name: str) -> str:
        for volume in self.pod["spec"].get("volumes") or []:
            if volume["name"] == name:
                return next((key for key in volume if key != "name"), "")
        return ""

    def _container_exited(self, run: ContainerRun) -> None:
        with self.cond:
            self._woken = True
            self.cond.notify_all()

    def _collect_exits(self) -> None:
        """Compute, once, the terminated state of each run that has ended."""
        for slot in [*self.init_slots, *self.slots]:
            for index, run in enumerate(slot.runs):
                if run.exit is not None and index not in slot.finished_states:
                    slot.finished_states[index] = self._terminated_state(slot, run)

    def _terminated_state(self, slot: ContainerSlot, run: ContainerRun) -> Obj:
        assert run.exit is not None
        code = run.exit.exit_code
        message = _read_tail(run.run_dir / "termination-log", MAX_TERMINATION_MESSAGE)
        if run.exit.start_error is not None:
            reason = "StartError"
            message = run.exit.start_error + (f": {message}" if message else "")
            self._warn_once("Failed", f"Error: {run.exit.start_error}")
        else:
            reason = "Completed" if code == 0 else "Error"
            fallback = slot.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            if fallback and code != 0 and not message:
                message = tail_text(run.log_file, MAX_FALLBACK_LOG_LINES, MAX_FALLBACK_LOG_BYTES)
        return st.terminated(
            exit_code=code,
            reason=reason,
            started_at=rfc3339(run.started_at) if run.started_at else None,
            finished_at=rfc3339(run.exit.finished_at),
            message=message,
            container_id=run.container_id,
            signal=run.exit.signal,
        )

    def _kill_all(self) -> None:
        for slot in [*self.init_slots, *self.slots]:
            if slot.current is not None:
                slot.current.kill()

    def _wait_for_exits(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while any(s.current and s.current.running() for s in [*self.init_slots, *self.slots]):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(min(left, 0.2))

    # -- status --------------------------------------------------------------------------

    def _container_status(self, slot: ContainerSlot) -> Obj:
        run = slot.current
        state: Obj
        if run is not None and run.exit is None and slot.restart_at is None:
            state = st.running(rfc3339(run.started_at or now()))
        elif run is not None and run.exit is not None and slot.restart_at is None:
            state = slot.finished_states.get(len(slot.runs) - 1) or st.waiting("ContainerCreating")
        else:
            state = st.waiting(slot.waiting_reason, slot.waiting_message)
        # The previous run's end, or the latest one's while waiting to restart it.
        finished = [i for i in slot.finished_states if "terminated" in slot.finished_states[i]]
        if slot.restart_at is not None and finished:
            last_state = slot.finished_states[max(finished)]
        elif len(slot.runs) > 1:
            last_state = slot.finished_states.get(len(slot.runs) - 2) or st.no_state()
        else:
            last_state = st.no_state()
        is_running = state.get("running") is not None
        image = slot.spec.get("image", "")
        return {
            "name": slot.name,
            "image": image,
            "imageID": image if slot.runs else "",
            "containerID": run.container_id if run is not None else None,
            "ready": is_running and not slot.init,
            "started": is_running,
            "restartCount": slot.restart_count,
            "state": state,
            "lastState": last_state,
        }

    def _status(self) -> Obj:
        generation = self.pod["metadata"].get("generation")
        terminal = self.phase in TERMINAL
        init_statuses = [self._container_status(slot) for slot in self.init_slots]
        statuses = [self._container_status(slot) for slot in self.slots]
        conditions = self.conditions
        incomplete = [slot.name for slot in self.init_slots if not slot.succeeded()]
        if incomplete and not any(slot.runs for slot in self.slots) and not terminal:
            initialized = conditions.condition(
                "Initialized",
                False,
                generation,
                st.CONTAINERS_NOT_INITIALIZED,
                st.unready_message("incomplete", incomplete),
            )
        else:
            initialized = conditions.condition("Initialized", True, generation)
        unready = [s["name"] for s in statuses if not s["ready"]]
        ready_conditions = []
        for kind in ("ContainersReady", "Ready"):
            if terminal:
                ready_conditions.append(
                    conditions.condition(kind, False, generation, st.terminal_reason(self.phase))
                )
            elif unready:
                ready_conditions.append(
                    conditions.condition(
                        kind,
                        False,
                        generation,
                        st.CONTAINERS_NOT_READY,
                        st.unready_message("unready", unready),
                    )
                )
            else:
                ready_conditions.append(conditions.condition(kind, True, generation))
        sandbox = conditions.condition(
            "PodReadyToStartContainers", self.volumes is not None and not terminal, generation
        )
        status: Obj = {
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "conditions": [sandbox, initialized, *ready_conditions],
            "startTime": self.start_time,
            "containerStatuses": statuses,
            **st.network_status(),
        }
        if generation is not None:
            status["observedGeneration"] = generation
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        return status

    def _report(self) -> None:
        """Send the status if it changed since the last report."""
        with self.cond:
            if self.shutting_down or self.deleted:
                return
        status = self._status()
        encoded = json.dumps(status, sort_keys=True)
        if encoded == self._last_report:
            return
        try:
            self.context.api.patch_pod_status(self.namespace, self.name, {"status": status})
        except Exception as error:
            if is_status(error, 404):
                raise PodGone from error
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, error)
            return
        self._last_report = encoded

    def _warn_once(self, reason: str, message: str) -> None:
        if message in self._warned:
            return
        self._warned.add(message)
        log.warning("pod %s/%s: %s: %s", self.namespace, self.name, reason, message)
        self.context.api.event(self.pod, "Pod", reason, message, COMPONENT, warning=True)


def _read_tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a file, as the kubelet reads termination messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
