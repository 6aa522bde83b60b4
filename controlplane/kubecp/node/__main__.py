"""``python -m kubecp.node``: run the process node."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kubecp.node.agent import IsolationUnavailable, Node, NodeConfig


def parse_args(argv: list[str]) -> NodeConfig:
    """Parse the command line into a NodeConfig."""
    parser = argparse.ArgumentParser(prog="python -m kubecp.node", description=__doc__)
    parser.add_argument("--name", required=True, help="Node name")
    parser.add_argument(
        "--kubeconfig", type=Path, required=True, help="kubelet identity (system:node:<name>)"
    )
    parser.add_argument(
        "--scheduler-kubeconfig", type=Path, help="identity allowed to bind pods; without it no pod is bound"
    )
    parser.add_argument("--root-dir", type=Path, required=True, help="where pod volumes, logs and scratch go")
    parser.add_argument(
        "--tls-cert-file", type=Path, required=True, help="serving certificate of the log API"
    )
    parser.add_argument("--tls-private-key-file", type=Path, required=True)
    parser.add_argument(
        "--client-ca-file", type=Path, required=True, help="CA of the apiserver's kubelet client"
    )
    parser.add_argument("--kubernetes-version", required=True, help="reported as the kubelet version")
    parser.add_argument("--port", type=int, default=0, help="port of the log API (default: any free one)")
    parser.add_argument(
        "--pythonpath", action="append", default=[], help="entry for the containers' PYTHONPATH (repeatable)"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment for every container"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter whose directory comes first on containers' PATH"
    )
    parser.add_argument("--isolation", choices=["auto", "mount-namespace", "none"], default="auto")
    parser.add_argument(
        "--image-dir",
        type=Path,
        help="where images of loopback registries are unpacked (default: ROOT_DIR/images/roots)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s: %(message)s",
    )
    return NodeConfig(
        name=args.name,
        kubeconfig=args.kubeconfig,
        scheduler_kubeconfig=args.scheduler_kubeconfig,
        root_dir=args.root_dir,
        tls_cert_file=args.tls_cert_file,
        tls_private_key_file=args.tls_private_key_file,
        client_ca_file=args.client_ca_file,
        kubernetes_version=args.kubernetes_version,
        python=args.python,
        pythonpath=args.pythonpath,
        env=env,
        isolation=args.isolation,
        port=args.port,
        image_dir=args.image_dir,
    )


def main() -> None:
    """Run the node until SIGTERM."""
    try:
        node = Node(parse_args(sys.argv[1:]))
    except IsolationUnavailable as error:
        # A clear reason in the node's log, which the control plane shows when the node exits.
        logging.getLogger("kubecp.node").error("%s", error)
        raise SystemExit(1) from None
    node.run()


if __name__ == "__main__":
    main()
