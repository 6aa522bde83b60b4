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
from kubecp.node.api import (
    Api,
    Obj,
    describe_error,
    is_status,
    now,
    parse_time,
    pod_replaced,
    retryable,
    rfc3339,
)
from kubecp.node.containers import ContainerRun, Mount
from kubecp.node.environment import (
    ConfigError,
    ImageStandIn,
    command_line,
    container_variables,
    image_environment,
    process_environment,
)
from kubecp.node.images import Image, ImageStore, NotPresentError, PullError, is_loopback_image
from kubecp.node.logs import tail_text
from kubecp.node.users import RunAs, run_as
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
# The kubelet's minimumGracePeriodInSeconds: even a force delete (grace 0) gets
# SIGTERM first and this long before SIGKILL.
MINIMUM_GRACE_SECONDS = 2.0
# Retries of failed API calls (and container starts): quick at first, since many
# failures are momentary (the Node authorizer learns of a binding a moment after
# it), then every few seconds at most.
RETRY_INITIAL_SECONDS, RETRY_MAX_SECONDS = 0.2, 5.0
# Volumes that still fail after this long get a FailedMount event.
FAILED_MOUNT_AFTER_SECONDS = 3.0
# The kubelet's image pull back-off; a failed pull shows ErrImagePull until the next sync, this long.
PULL_BACKOFF_INITIAL, PULL_BACKOFF_MAX = 10.0, 300.0
PULL_ERROR_SHOWN_SECONDS = 1.0


class Backoff:
    """Bounded exponential back-off between the retries of something that fails."""

    def __init__(self, initial: float = RETRY_INITIAL_SECONDS, maximum: float = RETRY_MAX_SECONDS) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self) -> float:
        """The delay before the next retry (each one longer, up to the maximum)."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """It worked: the next failure is retried quickly again."""
        self.delay = self.initial


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
    #: Images of loopback registries (None: every container runs on the node's Python environment).
    images: ImageStore | None = None


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
    #: When to try again to start a run whose start failed (config or API error).
    start_retry_at: float | None = None
    start_backoff: Backoff = field(default_factory=Backoff)
    #: State dicts (see status.py) of finished runs, computed once when they end.
    finished_states: dict[int, Obj] = field(default_factory=dict)
    #: After a failed pull: when the image may be pulled again.
    pull_retry_at: float | None = None
    pull_backoff: Backoff = field(default_factory=lambda: Backoff(PULL_BACKOFF_INITIAL, PULL_BACKOFF_MAX))
    #: ``<repository>@<digest>`` of the image the latest run was started from (images only).
    image_id: str | None = None

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
        self._deleted_at: float | None = None
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
        #: Whether this worker ran the pod, so its status is this worker's to report.
        self._reporting = False
        self._report_backoff = Backoff()
        #: Set while the latest status could not be sent: when to try again.
        self._report_retry_at: float | None = None
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
            if not self.deleted:
                self._deleted_at = time.monotonic()
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
            # Its files go, and the node forgets it (the watch may not tell, e.g. for a
            # pod re-created under the same name).
            with self.cond:
                if self._deleted_at is None:
                    self._deleted_at = time.monotonic()
                self.deleted = True
            # Its containers still get SIGTERM first, as after a force delete.
            self._terminate(MINIMUM_GRACE_SECONDS, deleting=False)
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
            # Finished before this node process knew it (e.g. the node restarted): its
            # status stays as it is.
            self._await_deletion()
            return
        self._reporting = True
        if self.start_time is None:
            self.start_time = rfc3339(now())
        self.directory.mkdir(parents=True, exist_ok=True)
        self._report()
        stop = self._prepare_volumes()
        if stop:
            return self._finish(stop)
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
        self._await_deletion()

    def _prepare_volumes(self) -> str | None:
        """Set up the pod's volumes, retrying until it works; the stop reason if the pod ends first."""
        backoff = Backoff()
        failing_since: float | None = None
        while True:
            stop = self._stop_reason()
            if stop:
                return stop
            try:
                self.volumes = prepare_volumes(self.context.api, self.pod, self.directory / "volumes")
                return None
            except VolumeError as error:
                self._warn_once("FailedMount", f"MountVolume.SetUp failed: {error}")
                self._pause(1.0)
            except Exception as error:
                # Any API error (a 404 too: e.g. a missing ServiceAccount for a token) may
                # go away; other exceptions are bugs.
                if not (retryable(error) or is_status(error, 404)):
                    raise
                message = describe_error(error)
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= FAILED_MOUNT_AFTER_SECONDS:
                    # A 403 is expected for a moment after the binding, not for this long.
                    self._warn_once("FailedMount", f"MountVolume.SetUp failed: {message}")
                else:
                    log.info("pod %s/%s: volumes: %s (retrying)", self.namespace, self.name, message)
                self._pause(backoff.next())

    def _stop_reason(self) -> str | None:
        with self.cond:
            if self.shutting_down:
                return "shutdown"
            if self.deleted:
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
        if why in (None, "shutdown"):
            # The node stops: the containers are killed on the way out, nothing is reported.
            return
        if why == "gone":
            # Force-deleted (grace 0): the object is gone already, but the containers
            # still get SIGTERM and the minimum grace period, as from the kubelet.
            self._terminate(MINIMUM_GRACE_SECONDS, deleting=False)
            return
        if why == "deadline":
            self.context.api.event(self.pod, "Pod", "DeadlineExceeded", DEADLINE_MESSAGE, COMPONENT)
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
            self._terminate(float(grace), deleting=False)
            self.phase, self.reason, self.message = "Failed", "DeadlineExceeded", DEADLINE_MESSAGE
            self._await_deletion()
            return
        # Deleted: SIGTERM, grace period, SIGKILL, a last status, then remove the object.
        self._terminate(self._deletion_grace(), deleting=True)
        started = [slot for slot in self.slots if slot.runs]
        all_ok = len(started) == len(self.slots) and all(slot.succeeded() for slot in self.slots)
        if self.phase not in TERMINAL:
            self.phase = "Succeeded" if all_ok else "Failed"
        # As the kubelet: the object goes only once its final status is recorded.
        if self._report_until_sent():
            self._delete_object()

    def _deletion_grace(self) -> float:
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def _terminate(self, grace: float, deleting: bool) -> None:
        """SIGTERM the running containers, wait up to ``grace`` seconds (at least the minimum), SIGKILL."""
        running = [
            slot for slot in [*self.init_slots, *self.slots] if slot.current and slot.current.running()
        ]
        for slot in running:
            self.context.api.event(self.pod, "Pod", "Killing", f"Stopping container {slot.name}", COMPONENT)
            assert slot.current is not None
            slot.current.signal(signal.SIGTERM)
        for slot in [*self.init_slots, *self.slots]:
            slot.restart_at = slot.start_retry_at = None
        deadline = time.monotonic() + max(grace, MINIMUM_GRACE_SECONDS)
        with self.cond:
            while any(s.current and s.current.running() for s in running) and not self.shutting_down:
                if deleting and not self.deleted:
                    # A second delete may shorten the grace period.
                    deadline = min(
                        deadline, time.monotonic() + max(self._deletion_grace(), MINIMUM_GRACE_SECONDS)
                    )
                if self._deleted_at is not None:
                    # Force-deleted meanwhile: the minimum grace from then on.
                    deadline = min(deadline, self._deleted_at + MINIMUM_GRACE_SECONDS)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        self._kill_all()
        self._wait_for_exits(10.0)
        self._collect_exits()

    def _await_deletion(self) -> None:
        """A finished pod stays until it is deleted; then the kubelet removes it at once.

        Meanwhile its final status is sent again until the apiserver has it.
        """
        while True:
            sent = self._report()
            with self.cond:
                if self.deleted or self.shutting_down:
                    return
                if sent and self.pod["metadata"].get("deletionTimestamp"):
                    break
                self.cond.wait(5.0 if sent else self._report_delay())
        self._delete_object()

    def _delete_object(self) -> None:
        """Remove the pod object (grace 0), retrying failures; then wait until the watch says it is gone."""
        backoff = Backoff()
        while True:
            try:
                self.context.api.delete_pod_now(self.namespace, self.name, self.uid)
                break
            except Exception as error:
                # 404: gone already; 409: the uid precondition failed, this pod is gone.
                if is_status(error, 404, 409):
                    break
                if not retryable(error):
                    raise
                log.warning(
                    "pod %s/%s: deleting the object failed (retrying): %s",
                    self.namespace,
                    self.name,
                    describe_error(error),
                )
            if not self._pause(backoff.next(), on_deletion=False):
                return
        # The object may linger on finalizers; the watch reports when it is gone.
        with self.cond:
            while not (self.deleted or self.shutting_down):
                self.cond.wait(5.0)

    def _pause(self, seconds: float, on_deletion: bool = True) -> bool:
        """Wait ``seconds`` before a retry; False (at once) when the object is gone or the node stops.

        With ``on_deletion``, also end the wait early when the pod gets a deletionTimestamp.
        Unlike :meth:`_sleep`, other updates of the pod do not cut the wait short.
        """
        deadline = time.monotonic() + seconds
        with self.cond:
            while not (self.deleted or self.shutting_down):
                if on_deletion and self.pod["metadata"].get("deletionTimestamp"):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self.cond.wait(left)
        return False

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
            # A restart is due when both its back-off and any retry of a failed start are.
            due = [moment for moment in (slot.restart_at, slot.start_retry_at) if moment is not None]
            if due:
                wakeup = min(wakeup, max(max(due) - time.monotonic(), 0.0) + 0.01)
        if self._report_retry_at is not None:
            wakeup = min(wakeup, self._report_delay())
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
                self._start_when_due(slot)
            elif slot.current.exit is not None:
                if restart_policy == "Never":
                    self.phase = "Failed"
                    return
                self._maybe_restart(slot)
            return
        for slot in self.slots:
            run = slot.current
            if run is None:
                self._start_when_due(slot)
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
        elif time.monotonic() >= slot.restart_at and self._start_when_due(slot):
            slot.restart_at = None

    def _start_when_due(self, slot: ContainerSlot) -> bool:
        """Start a run of ``slot`` unless an earlier failed start is not due for a retry yet."""
        if slot.start_retry_at is not None and time.monotonic() < slot.start_retry_at:
            return False
        return self._start(slot)

    def _start(self, slot: ContainerSlot) -> bool:
        """Start a run of ``slot``; on failure (reported in its waiting state) schedule a retry."""
        assert self.volumes is not None
        spec = slot.spec
        try:
            variables = container_variables(
                self.context.api,
                self.pod,
                spec,
                self.context.service_env,
                self.context.allocatable,
            )
            image = None
            if self.context.images is not None and is_loopback_image(spec.get("image", "")):
                image = self._image(slot)
                if image is None:
                    return False
            # As the kubelet: $(VAR) in command and args sees the container's own variables
            # only, not what the image defines.
            if image is None:
                argv = command_line(spec, variables)
                env = process_environment(self.pod, self.context.image, variables)
                return self._start_run(slot, argv, env)
            user = run_as(self.pod, spec, image)
            argv = command_line(spec, variables, image.config)
            env = image_environment(self.pod, image.config, variables, user.home)
            return self._start_run(slot, argv, env, image, user)
        except ConfigError as error:
            slot.waiting_reason, slot.waiting_message = "CreateContainerConfigError", str(error)
            self._warn_once("Failed", f"Error: {error}")
        except Exception as error:
            # The API failed us (or the file system did): keep the container waiting and
            # retry, as the kubelet's next sync would.
            if not retryable(error):
                raise
            message = describe_error(error)
            log.warning(
                "pod %s/%s: starting %s: %s (retrying)", self.namespace, self.name, slot.name, message
            )
            slot.waiting_reason, slot.waiting_message = "CreateContainerConfigError", message
        slot.start_retry_at = time.monotonic() + slot.start_backoff.next()
        return False

    def _image(self, slot: ContainerSlot) -> Image | None:
        """The container's image, pulled per its pull policy; None while it cannot be (waiting reason set)."""
        assert self.context.images is not None
        reference = str(slot.spec.get("image", ""))
        if slot.pull_retry_at is not None and time.monotonic() < slot.pull_retry_at:
            slot.waiting_reason, slot.waiting_message = (
                "ImagePullBackOff",
                f'Back-off pulling image "{reference}"',
            )
            self._event_once("BackOff", f'Back-off pulling image "{reference}"')
            slot.start_retry_at = slot.pull_retry_at
            return None
        policy = slot.spec.get("imagePullPolicy") or default_pull_policy(reference)
        store = self.context.images
        try:
            image = store.present(reference) if policy != "Always" else None
            if image is not None:
                self._event_once("Pulled", f'Container image "{reference}" already present on machine')
            elif policy == "Never":
                raise NotPresentError(
                    f'Container image "{reference}" is not present with pull policy of Never'
                )
            else:
                self._event_once("Pulling", f'Pulling image "{reference}"')
                started = time.monotonic()
                image = store.pull(reference)
                self.context.api.event(
                    self.pod,
                    "Pod",
                    "Pulled",
                    f'Successfully pulled image "{reference}" in {time.monotonic() - started:.3f}s',
                    COMPONENT,
                )
        except NotPresentError as error:
            slot.waiting_reason, slot.waiting_message = "ErrImageNeverPull", str(error)
            self._warn_once("ErrImageNeverPull", str(error))
            slot.start_retry_at = time.monotonic() + slot.pull_backoff.next()
            return None
        except PullError as error:
            log.warning("pod %s/%s: pulling %s: %s", self.namespace, self.name, reference, error)
            slot.waiting_reason, slot.waiting_message = "ErrImagePull", str(error)
            self._warn_once("Failed", f'Failed to pull image "{reference}": {error}')
            slot.pull_retry_at = time.monotonic() + slot.pull_backoff.next()
            # The next sync shows the back-off, as the kubelet's does.
            slot.start_retry_at = time.monotonic() + PULL_ERROR_SHOWN_SECONDS
            return None
        slot.pull_retry_at = None
        slot.pull_backoff.reset()
        return image

    def _event_once(self, reason: str, message: str) -> None:
        if message in self._warned:
            return
        self._warned.add(message)
        self.context.api.event(self.pod, "Pod", reason, message, COMPONENT)

    def _start_run(
        self,
        slot: ContainerSlot,
        argv: list[str],
        env: dict[str, str],
        image: Image | None = None,
        user: RunAs | None = None,
    ) -> bool:
        assert self.volumes is not None
        spec = slot.spec
        run_dir = self.directory / "containers" / slot.name / str(len(slot.runs))
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
        working_dir = spec.get("workingDir")
        if image is not None:
            if not self.context.isolate:
                raise ConfigError(
                    "the process node runs images only with mount namespaces (it runs as root, "
                    "see controlplane/README.md)"
                )
            mounts = [*self._network_files(), *mounts]
            working_dir = working_dir or image.config.working_dir or "/"
        run = ContainerRun(
            name=slot.name,
            run_dir=run_dir,
            argv=argv,
            env=env,
            mounts=mounts,
            working_dir=working_dir,
            hostname=self.pod["spec"].get("hostname") or self.name,
            isolate=self.context.isolate,
            python=self.context.python,
            on_exit=self._container_exited,
            rootfs=image.rootfs if image is not None else None,
            user=user,
            no_new_privileges=image is not None
            and (spec.get("securityContext") or {}).get("allowPrivilegeEscalation") is False,
        )
        run.start()
        slot.image_id = image.image_id if image is not None else None
        if slot.runs:
            slot.restart_count += 1
        slot.runs.append(run)
        slot.start_retry_at = None
        slot.start_backoff.reset()
        slot.waiting_reason, slot.waiting_message = "ContainerCreating", None
        self.context.api.event(self.pod, "Pod", "Started", f"Started container {slot.name}", COMPONENT)
        return True

    def _network_files(self) -> list[Mount]:
        """/etc/hosts, /etc/hostname and /etc/resolv.conf, as the kubelet gives every container."""
        hostname = self.pod["spec"].get("hostname") or self.name
        hosts = self.directory / "etc-hosts"
        if not hosts.exists():
            hosts.write_text(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"
                f"::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\t{hostname}\n"
            )
            (self.directory / "etc-hostname").write_text(hostname + "\n")
        mounts = [Mount(hosts, "/etc/hosts"), Mount(self.directory / "etc-hostname", "/etc/hostname")]
        if Path("/etc/resolv.conf").exists():
            mounts.append(Mount(Path("/etc/resolv.conf"), "/etc/resolv.conf", read_only=True))
        return mounts

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
        if slot.init:
            # The prober manager's rule: an init container is ready once it exited 0.
            ended = state.get("terminated")
            ready = ended is not None and ended["exitCode"] == 0
        else:
            ready = is_running
        image = slot.spec.get("image", "")
        return {
            "name": slot.name,
            "image": image,
            "imageID": (slot.image_id or image) if slot.runs else "",
            "containerID": run.container_id if run is not None else None,
            "ready": ready,
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
        initialized = self._initialized_condition(init_statuses, statuses, generation)
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

    def _initialized_condition(
        self, init_statuses: list[Obj], statuses: list[Obj], generation: int | None
    ) -> Obj:
        """The Initialized condition, by the rules of the kubelet's GeneratePodInitializedCondition."""
        if self.phase == "Succeeded":
            return self.conditions.condition("Initialized", True, generation, st.POD_COMPLETED)
        # A regular container that has run means the init containers completed before.
        started = any(s["state"].get("running") or s["state"].get("terminated") for s in statuses)
        incomplete = [s["name"] for s in init_statuses if not s["ready"]]
        if started or not incomplete:
            return self.conditions.condition("Initialized", True, generation)
        return self.conditions.condition(
            "Initialized",
            False,
            generation,
            st.CONTAINERS_NOT_INITIALIZED,
            st.unready_message("incomplete", incomplete),
        )

    def _report(self) -> bool:
        """Send the status if it changed since the last report (or that failed); whether it is sent.

        A failed report is retried: by the loops calling this again, not before
        :meth:`_report_delay` (a bounded back-off).
        """
        with self.cond:
            if self.shutting_down or self.deleted or not self._reporting:
                return True
        status = self._status()
        encoded = json.dumps(status, sort_keys=True)
        if encoded == self._last_report:
            return True
        try:
            self.context.api.patch_pod_status(self.namespace, self.name, self.uid, status)
        except Exception as error:
            if is_status(error, 404) or pod_replaced(error):
                raise PodGone from error
            if not retryable(error):
                raise
            delay = self._report_backoff.next()
            self._report_retry_at = time.monotonic() + delay
            log.warning(
                "pod %s/%s: status update failed (retrying in %.1fs): %s",
                self.namespace,
                self.name,
                delay,
                describe_error(error),
            )
            return False
        self._last_report = encoded
        self._report_retry_at = None
        self._report_backoff.reset()
        return True

    def _report_delay(self) -> float:
        """Seconds until a failed report is due to be retried."""
        if self._report_retry_at is None:
            return 0.0
        return max(self._report_retry_at - time.monotonic(), 0.0) + 0.01

    def _report_until_sent(self) -> bool:
        """Send the status, retrying failures; False if the object went away or the node stops first."""
        while not self._report():
            if not self._pause(self._report_delay(), on_deletion=False):
                return False
        with self.cond:
            return not (self.deleted or self.shutting_down)

    def _warn_once(self, reason: str, message: str) -> None:
        if message in self._warned:
            return
        self._warned.add(message)
        log.warning("pod %s/%s: %s: %s", self.namespace, self.name, reason, message)
        self.context.api.event(self.pod, "Pod", reason, message, COMPONENT, warning=True)


def default_pull_policy(image: str) -> str:
    """The apiserver's default imagePullPolicy: Always for ``:latest`` or no tag, else IfNotPresent."""
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


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
