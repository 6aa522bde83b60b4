"""The process node: a Node object kept Ready, and a pod worker for every pod bound to it."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from kubecp.node.api import Api, Obj, describe_error, is_status, now, rfc3339
from kubecp.node.environment import ImageStandIn
from kubecp.node.images import ImageStore
from kubecp.node.logs_server import LogsServer
from kubecp.node.pods import NodeContext, PodWorker
from kubecp.node.scheduler import Scheduler

log = logging.getLogger("kubecp.node")

LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10.0
STATUS_REPORT_SECONDS = 60.0
MAX_PODS = "110"


@dataclass
class NodeConfig:
    """Configuration of the process node (see ``python -m kubecp.node --help``)."""

    name: str
    kubeconfig: Path
    root_dir: Path
    tls_cert_file: Path
    tls_private_key_file: Path
    client_ca_file: Path
    kubernetes_version: str
    #: Without it, pods must name the node themselves (``spec.nodeName``).
    scheduler_kubeconfig: Path | None = None
    #: Interpreter whose directory goes first on the containers' PATH.
    python: str = sys.executable
    pythonpath: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: "auto", "mount-namespace" or "none" (see README).
    isolation: str = "auto"
    port: int = 0
    #: Where images of loopback registries are unpacked (default: ``<root_dir>/images/roots``).
    image_dir: Path | None = None


class IsolationUnavailable(RuntimeError):
    """``--isolation=mount-namespace`` was asked for, and containers cannot get it here."""


# What container_init does for a container that needs an overlay, in a throwaway
# process: new namespaces, / private, a tmpfs for scratch, an overlay of / on it.
_ISOLATION_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(result, what):
    if result != 0:
        sys.exit(f"{what}: {os.strerror(ctypes.get_errno())}")
scratch = sys.argv[1]
check(libc.unshare(0x00020000 | 0x04000000), "unshare(CLONE_NEWNS|CLONE_NEWUTS)")
check(libc.mount(b"none", b"/", None, 16384 | (1 << 18), None), "making / a private mount")
check(libc.mount(b"tmpfs", scratch.encode(), b"tmpfs", 0, b"mode=0755"), "mounting a tmpfs")
lower, upper, work, merged = (os.path.join(scratch, part) for part in ("lower", "upper", "work", "merged"))
for path in (lower, upper, work, merged):
    os.mkdir(path)
check(libc.mount(b"/", lower.encode(), None, 4096, None), "bind-mounting /")
options = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
check(libc.mount(b"overlay", merged.encode(), b"overlay", 0, options), "mounting an overlay of /")
"""


def mount_namespace_problem(python: str, directory: Path) -> str | None:
    """Why containers cannot get private mount namespaces here (None if they can).

    They need root (CAP_SYS_ADMIN), no policy forbidding unshare or mount, tmpfs
    and overlayfs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".isolation-probe-", dir=directory)
    try:
        result = subprocess.run(
            [python, "-I", "-c", _ISOLATION_PROBE, scratch],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"the probe failed: {error}"
    finally:
        # The mounts were in the probe's namespace: what is left here is an empty directory.
        shutil.rmtree(scratch, ignore_errors=True)
    if result.returncode != 0:
        return result.stderr.strip() or f"the probe exited with {result.returncode}"
    return None


def _memory_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


class Node:
    """Registers the node, heartbeats, binds pending pods and runs the pods bound to it."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.stop = threading.Event()
        self.api = Api(config.kubeconfig)
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self.node: Obj | None = None
        self.registered_at = rfc3339(now())
        self.labels = {
            "kubernetes.io/hostname": config.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                platform.machine(), platform.machine()
            ),
        }
        self.allocatable = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{_memory_kib()}Ki",
            "pods": MAX_PODS,
            "ephemeral-storage": "100Gi",
        }
        problem = (
            None if config.isolation == "none" else mount_namespace_problem(config.python, config.root_dir)
        )
        if problem is not None and config.isolation == "mount-namespace":
            raise IsolationUnavailable(
                f"containers cannot get private mount namespaces here ({problem}); they need root "
                "and a kernel that allows unshare, tmpfs and overlayfs (see controlplane/README.md)"
            )
        isolate = config.isolation != "none" and problem is None
        if not isolate:
            log.warning(
                "containers run WITHOUT private mount namespaces%s: volumes and termination messages "
                "are not visible at their mountPath (needs root; see controlplane/README.md)",
                f" ({problem})" if problem else "",
            )
        server = urllib.parse.urlsplit(self.api.server)
        port = str(server.port or 443)
        self.context = NodeContext(
            api=self.api,
            node_name=config.name,
            root=config.root_dir,
            image=ImageStandIn(Path(config.python).parent, list(config.pythonpath), dict(config.env)),
            python=config.python,
            isolate=isolate,
            # The `kubernetes` Service is unreachable without kube-proxy: point in-cluster
            # clients straight at the apiserver (its certificate names 127.0.0.1).
            service_env={
                "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{server.hostname}:{port}",
            },
            allocatable=self.allocatable,
            images=ImageStore(config.root_dir / "images", config.image_dir),
        )
        self.logs_server = LogsServer(
            self._find_pod,
            config.tls_cert_file,
            config.tls_private_key_file,
            config.client_ca_file,
            config.port,
        )

    # -- running ----------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        self.config.root_dir.mkdir(parents=True, exist_ok=True)
        self.logs_server.start()
        self._register()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._watch_pods, name="pods", daemon=True).start()
        if self.config.scheduler_kubeconfig is not None:
            Scheduler(
                Api(self.config.scheduler_kubeconfig), self.config.name, lambda: self.labels, self.stop
            ).start()
        log.info(
            "node %s ready (API %s, logs on 127.0.0.1:%d, containers: %s)",
            self.config.name,
            self.api.server,
            self.logs_server.port,
            "mount namespaces" if self.context.isolate else "no isolation",
        )
        self.stop.wait()
        self._shutdown()

    def _shutdown(self) -> None:
        log.info("node %s stopping", self.config.name)
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(10.0)
        self.logs_server.stop()

    # -- the Node object ---------------------------------------------------------------

    def _register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.config.name, "labels": self.labels},
            "spec": {},
        }
        while not self.stop.is_set():
            try:
                node = self.api.get_node(self.config.name)
                self.node = node if node is not None else self.api.create_node(body)
                self._report_status()
                self.api.renew_lease(self.node, LEASE_SECONDS)
                return
            except Exception as error:
                log.warning("registering node %s: %s; retrying", self.config.name, error)
                self.stop.wait(1.0)

    def _node_status(self) -> Obj:
        heartbeat = rfc3339(now())

        def condition(kind: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": self.registered_at,
            }

        uname = platform.uname()
        return {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"
                ),
                condition(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.config.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.logs_server.port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": uname.release,
                "osImage": f"{uname.system} (kubecp process node)",
                "containerRuntimeVersion": "kubecp-process://0.1.0",
                "kubeletVersion": self.config.kubernetes_version,
                "operatingSystem": "linux",
                "architecture": self.labels["kubernetes.io/arch"],
            },
        }

    def _report_status(self) -> None:
        self.api.patch_node_status(self.config.name, {"status": self._node_status()})

    def _heartbeat(self) -> None:
        since_report = 0.0
        while not self.stop.wait(LEASE_RENEW_SECONDS):
            since_report += LEASE_RENEW_SECONDS
            try:
                assert self.node is not None
                self.api.renew_lease(self.node, LEASE_SECONDS)
                if since_report >= STATUS_REPORT_SECONDS:
                    self._report_status()
                    since_report = 0.0
            except Exception as error:
                log.warning("heartbeat failed: %s", error)

    # -- pods ---------------------------------------------------------------------

    def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.config.name}"
        version: str | None = None
        while not self.stop.is_set():
            try:
                if version is None:
                    pods, version = self.api.list_pods(selector)
                    self._sync(pods)
                for kind, pod in self.api.watch_pods(selector, version, timeout=300):
                    if self.stop.is_set():
                        return
                    version = pod["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        self._handle(kind, pod)
            except Exception as error:
                if is_status(error, 410):
                    # The resourceVersion expired (compaction): list again at once.
                    log.info("pod watch: %s; listing again", describe_error(error))
                else:
                    log.warning("pod watch: %s; listing again", describe_error(error))
                    self.stop.wait(1.0)
                version = None

    def _sync(self, pods: list[Obj]) -> None:
        """Reconcile after a (re)list: start workers for new pods, stop those whose pod vanished."""
        present = {pod["metadata"]["uid"] for pod in pods}
        with self._lock:
            vanished = [worker for uid, worker in self.workers.items() if uid not in present]
        for worker in vanished:
            worker.object_deleted()
        for pod in pods:
            self._handle("MODIFIED", pod)

    def _handle(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self.workers.get(uid)
            if worker is None and kind != "DELETED":
                worker = PodWorker(self.context, pod, self._worker_done)
                self.workers[uid] = worker
                worker.start()
                return
        if worker is None:
            return
        if kind == "DELETED":
            worker.object_deleted()
        else:
            worker.update(pod)

    def _worker_done(self, worker: PodWorker) -> None:
        # A worker that failed stays registered: a new one would start the containers again.
        if not (worker.deleted or worker.shutting_down):
            return
        with self._lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]

    def _find_pod(self, namespace: str, name: str) -> PodWorker | None:
        with self._lock:
            for worker in self.workers.values():
                if worker.namespace == namespace and worker.name == name and not worker.deleted:
                    return worker
        return None
