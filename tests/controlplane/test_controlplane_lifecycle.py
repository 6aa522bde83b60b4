"""Starting and stopping leaves nothing behind; failures are loud."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kubecp
from kubecp.binaries import BuildError, _go_env, ensure_binaries, remove_stale_outputs
from kubecp.cluster import ControlPlane
from kubecp.processes import pid_running
from kubecp.testing import python_pod, wait_for

CONTROLPLANE_DIR = Path(kubecp.__file__).resolve().parent.parent


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cluster_pids(workdir: Path) -> list[int]:
    state = json.loads((workdir / "state.json").read_text())
    pids = [int(p["pid"]) for p in state["processes"]]
    pids += [int(f.read_text().split()[0]) for f in workdir.glob("node/pods/*/containers/*/pid")]
    return pids


def alive(pid: int) -> bool:
    # A zombie main thread whose other threads still exit (and hold the sockets) is alive.
    return pid_running(pid)


def describe(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError as error:
        return str(error)
    return f"{stat[:120]} | {cmdline[:200]}"


def start_sleeper(plane: ControlPlane) -> None:
    plane.kubectl(
        "create", "-f", "-", input=json.dumps(python_pod("sleeper", "import time; time.sleep(600)"))
    )
    wait_for(
        lambda: plane.kubectl("get", "pod", "sleeper", "-o", "jsonpath={.status.phase}").stdout == "Running",
        what="sleeper running",
    )


def test_stop_leaves_no_process_and_no_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Also: a proxy in the environment (as CI machines often have) does not get in the way
    # of starting, of the node or of kubectl.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with ControlPlane(tmp_path / "cluster") as plane:
        start_sleeper(plane)
        pids = cluster_pids(plane.workdir)
        port = int(plane.server.rsplit(":", 1)[1])
        assert len(pids) == 5 and all(alive(pid) for pid in pids)
    assert [pid for pid in pids if alive(pid)] == []
    assert not port_open(port)


def test_everything_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from kubecp.cluster import ControlPlane
        plane = ControlPlane(Path({str(workdir)!r})).start()
        print(plane.server, flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(CONTROLPLANE_DIR)}
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert owner.stdout is not None
        server = owner.stdout.readline().strip()
        assert server.startswith("https://"), "the control plane did not start"
        start_sleeper(ControlPlane(workdir))  # not started: only its kubectl() is used
        pids = cluster_pids(workdir)
        assert len(pids) == 5

        owner.send_signal(signal.SIGKILL)  # no cleanup code runs
        owner.wait()

        try:
            wait_for(lambda: not any(alive(pid) for pid in pids), timeout=15, what="all processes gone")
        except TimeoutError:
            left = {pid: describe(pid) for pid in pids if alive(pid)}
            raise AssertionError(f"still alive: {left}") from None
        # The kernel closes a dead process's sockets as its last threads exit, which the
        # check above may just precede.
        port = int(server.rsplit(":", 1)[1])
        wait_for(lambda: not port_open(port), timeout=15, what=f"port {port} closed")
    finally:
        owner.kill()
        owner.wait()


def test_missing_go_fails_the_build_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBESTEP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BuildError, match="needs Go"):
        ensure_binaries()


def test_a_new_build_removes_what_an_interrupted_one_left(tmp_path: Path) -> None:
    (tmp_path / "tmpk3x9_q").mkdir()
    (tmp_path / "tmpk3x9_q" / "kube-apiserver").write_bytes(b"half a binary")
    (tmp_path / "go.mod").write_text("module kubestep.invalid/probe\n")
    remove_stale_outputs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["go.mod"]


def test_goflags_of_the_environment_are_extended(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GOFLAGS", "-p=1")
    assert _go_env(tmp_path)["GOFLAGS"] == "-p=1 -mod=mod"
    monkeypatch.delenv("GOFLAGS")
    assert _go_env(tmp_path)["GOFLAGS"] == "-mod=mod"


def test_the_fixture_fails_rather_than_skips_without_binaries(tmp_path: Path) -> None:
    (tmp_path / "test_uses_cluster.py").write_text("def test_it(control_plane):\n    pass\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(CONTROLPLANE_DIR),
        "KUBESTEP_CACHE_DIR": str(tmp_path / "empty-cache"),
        "PATH": str(Path(sys.executable).parent),  # no Go
        # CI's options (-x, --timeout, plugins...) are not for this inner session.
        "PYTEST_ADDOPTS": "",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "kubecp.pytest_plugin",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    assert "1 error" in result.stdout and "skipped" not in result.stdout
    assert "could not be built" in result.stdout and "needs Go" in result.stdout
