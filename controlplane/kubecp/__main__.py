"""``python -m kubecp``: build the binaries, start or stop a background cluster, measure a start.

python -m kubecp build              # build/cache the binaries, print their paths
python -m kubecp up [--dir DIR]     # start a cluster in the background (make cluster-up)
python -m kubecp down [--dir DIR]   # stop it, leaving nothing behind (make cluster-down)
python -m kubecp measure            # time a cold-process start until a pod has run; memory
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from kubecp.binaries import BuildError, ensure_binaries
from kubecp.cluster import STATE_FILE, ControlPlane, ControlPlaneError, NodeOptions, stop_detached
from kubecp.processes import process_start_time
from kubecp.testing import python_pod, wait_for

DEFAULT_DIR = Path(".kubestep/cluster")


def _running(directory: Path) -> bool:
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return any(process_start_time(int(p["pid"])) == p.get("start_time") for p in state.get("processes", []))


def _node_options(args: argparse.Namespace) -> NodeOptions:
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return NodeOptions(pythonpath=[str(Path(p).resolve()) for p in args.pythonpath], env=env)


def up(args: argparse.Namespace) -> None:
    """Start a detached cluster whose files (kubeconfig, logs) live in ``args.dir``."""
    directory: Path = args.dir.resolve()
    if _running(directory):
        raise SystemExit(f"a cluster is already running in {directory} (make cluster-down stops it)")
    shutil.rmtree(directory, ignore_errors=True)
    plane = ControlPlane(directory, node=_node_options(args), detach=True, keep_workdir=True)
    plane.start()
    print(
        f"cluster up in {plane.startup_seconds:.1f}s: {plane.server} (Kubernetes {plane.versions.kubernetes})"
    )
    print(f"logs: {plane.logs}/")
    print("use it with:")
    print(f"  export KUBECONFIG={plane.kubeconfig}")
    # kubectl's discovery cache in ~/.kube/cache is keyed by host and port: an earlier
    # cluster on the same port (other CRDs) would be believed.
    print(f"  export KUBECACHEDIR={plane.workdir / 'kube-cache'}")
    print("  kubectl get nodes")


def down(args: argparse.Namespace) -> None:
    """Stop the cluster of ``args.dir`` and remove its files."""
    directory: Path = args.dir.resolve()
    if not stop_detached(directory, log=print):
        print(f"no cluster in {directory}")
    shutil.rmtree(directory, ignore_errors=True)


def measure(args: argparse.Namespace) -> None:
    """Start a cluster, run one pod to completion, print the timings and memory, stop."""
    ensure_binaries()
    started = time.monotonic()
    with ControlPlane(node=_node_options(args)) as plane:
        ready = time.monotonic() - started
        rss = plane.rss_bytes()
        plane.kubectl("create", "-f", "-", input=json.dumps(python_pod("probe", "print('hello')")))
        wait_for(
            lambda: (
                plane.kubectl("get", "pod", "probe", "-o", "jsonpath={.status.phase}").stdout == "Succeeded"
            ),
            what="probe pod",
        )
        pod_done = time.monotonic() - started
    stopped = time.monotonic() - started - pod_done
    print(f"control plane + node ready: {ready:.2f}s")
    print(f"first pod Succeeded:        {pod_done:.2f}s after start")
    print(f"stop:                       {stopped:.2f}s")
    for name, value in rss.items():
        print(f"RSS {name:<24} {value / 2**20:7.1f} MiB")
    print(f"RSS {'total':<24} {sum(rss.values()) / 2**20:7.1f} MiB")


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m kubecp", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build or find the binaries, print their paths")
    for name, help_text in (("up", "start a cluster in the background"), ("measure", "time a start")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--pythonpath", action="append", default=[], help="PYTHONPATH entry for containers (repeatable)"
        )
        command.add_argument(
            "--env", action="append", default=[], metavar="KEY=VALUE", help="env for containers"
        )
        if name == "up":
            command.add_argument(
                "--dir", type=Path, default=DEFAULT_DIR, help=f"state directory ({DEFAULT_DIR})"
            )
    stop = commands.add_parser("down", help="stop the background cluster")
    stop.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state directory ({DEFAULT_DIR})")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for path in ensure_binaries().all():
                print(path)
        else:
            {"up": up, "down": down, "measure": measure}[args.command](args)
    except (BuildError, ControlPlaneError) as error:
        print(f"kubecp: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
