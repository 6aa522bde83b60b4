"""The process node's image rules that need no cluster: references, layers, command, user."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kubecp.node.environment import ConfigError, command_line
from kubecp.node.images import Image, ImageConfig, Reference, apply_layer, resolve_in_root
from kubecp.node.pods import default_pull_policy
from kubecp.node.users import run_as


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("127.0.0.1:5000/kubestep/runner:1.0", ("127.0.0.1:5000", "kubestep/runner", "1.0", None)),
        ("localhost:5000/contacts", ("localhost:5000", "contacts", "latest", None)),
        ("[::1]:5000/a/b@sha256:" + "0" * 64, ("[::1]:5000", "a/b", None, "sha256:" + "0" * 64)),
        ("127.0.0.1/contacts:1", None),  # no port: not a registry this node would run
        ("ghcr.io/example/contacts:1.0", None),
        ("python:3.11-slim", None),
    ],
)
def test_only_images_of_a_loopback_registry_run_as_images(
    image: str, expected: tuple[Any, ...] | None
) -> None:
    reference = Reference.parse(image)
    found = (
        None
        if reference is None
        else (reference.registry, reference.repository, reference.tag, reference.digest)
    )
    assert found == expected


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("r:1/a", "Always"),
        ("h:1/a:latest", "Always"),
        ("h:1/a:1.0", "IfNotPresent"),
        ("h:1/a@sha256:1", "IfNotPresent"),
    ],
)
def test_the_default_pull_policy_is_the_apiservers(image: str, policy: str) -> None:
    assert default_pull_policy(image) == policy


IMAGE = ImageConfig(entrypoint=["python", "-m", "runner"], cmd=["--default"])


@pytest.mark.parametrize(
    ("container", "argv"),
    [
        ({}, ["python", "-m", "runner", "--default"]),
        ({"args": ["--x", "$(WHO)"]}, ["python", "-m", "runner", "--x", "pod"]),
        ({"command": ["sh"]}, ["sh"]),
        ({"command": ["sh"], "args": ["-c", "$(WHO)"]}, ["sh", "-c", "pod"]),
    ],
)
def test_command_and_args_combine_with_entrypoint_and_cmd(container: dict[str, Any], argv: list[str]) -> None:
    assert command_line(container, {"WHO": "pod"}, IMAGE) == argv


def test_an_image_without_any_command_cannot_start() -> None:
    with pytest.raises(ConfigError, match="no command specified"):
        command_line({}, {}, ImageConfig())


def layer(*entries: tuple[str, str, int, bytes | str | None]) -> io.BytesIO:
    """A layer tar of (name, type, mode, content or link target) entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind, mode, content in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = str(content)
                archive.addfile(info)
            else:
                data = content if isinstance(content, bytes) else b""
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def test_layers_apply_in_order_with_whiteouts_and_keep_their_modes(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    apply_layer(
        layer(
            ("tmp", "dir", 0o1777, None),
            ("usr/bin/tool", "file", 0o4755, b"v1"),
            ("etc/old", "file", 0o644, b"old"),
            ("cache/a", "file", 0o644, b"a"),
            ("run", "dir", 0o755, None),
            ("var/run", "link", 0o777, "/run"),
        ),
        root,
    )
    apply_layer(
        layer(
            ("etc/.wh.old", "file", 0o644, b""),
            ("cache/b", "file", 0o644, b"b"),
            ("cache/.wh..wh..opq", "file", 0o644, b""),
            ("usr/bin/tool", "file", 0o755, b"v2"),
        ),
        root,
    )
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert (root / "usr/bin/tool").read_bytes() == b"v2"
    assert not (root / "etc/old").exists()
    # The opaque marker hides what lower layers had there, not what its own layer put there.
    assert sorted(os.listdir(root / "cache")) == ["b"]
    assert os.readlink(root / "var/run") == "/run"
    # Resolved in the image, the absolute link stays in it.
    assert resolve_in_root(root, "/var/run/secrets") == root / "run" / "secrets"
    assert resolve_in_root(root, "/var/../../etc") == root / "etc"


def test_a_layer_cannot_write_through_a_link_out_of_the_image(tmp_path: Path) -> None:
    root, outside = tmp_path / "rootfs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    apply_layer(layer(("escape", "link", 0o777, str(outside))), root)
    with pytest.raises(tarfile.FilterError):
        apply_layer(layer(("escape/planted", "file", 0o644, b"x")), root)
    assert not (outside / "planted").exists()


def image_with_users(tmp_path: Path, user: str) -> Image:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1001:\nextra:x:1500:app\n")
    return Image("img", "img@sha256:0", root, ImageConfig(user=user))


def pod(pod_context: dict[str, Any] | None = None, container_context: dict[str, Any] | None = None) -> Any:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"securityContext": pod_context or {}},
    }, {"name": "main", "securityContext": container_context or {}}


@pytest.mark.parametrize(
    ("user", "pod_context", "container_context", "expected"),
    [
        ("65532:65532", {}, {}, (65532, 65532, {65532}, "/")),
        ("app", {}, {}, (1000, 1001, {1001, 1500}, "/home/app")),
        (
            "app",
            {"runAsUser": 7, "runAsGroup": 8, "fsGroup": 9, "supplementalGroups": [10]},
            {},
            (7, 8, {8, 9, 10}, "/"),
        ),
        ("", {"runAsUser": 7}, {"runAsUser": 1000}, (1000, 1001, {1001, 1500}, "/home/app")),
    ],
)
def test_the_user_is_the_pods_else_the_images(
    tmp_path: Path, user: str, pod_context: Any, container_context: Any, expected: tuple[Any, ...]
) -> None:
    the_pod, container = pod(pod_context, container_context)
    identity = run_as(the_pod, container, image_with_users(tmp_path, user))
    assert (identity.uid, identity.gid, set(identity.groups), identity.home) == expected


@pytest.mark.parametrize(
    ("user", "pod_context", "message"),
    [
        ("", {"runAsNonRoot": True}, "image will run as root"),
        ("0:0", {"runAsNonRoot": True}, "image will run as root"),
        ("app", {"runAsNonRoot": True}, "image has non-numeric user (app), cannot verify user is non-root"),
        ("65532", {"runAsNonRoot": True, "runAsUser": 0}, "runAsUser breaks non-root policy"),
        ("nobody", {}, "unable to find user nobody"),
    ],
)
def test_a_user_that_breaks_the_pods_policy_is_refused(
    tmp_path: Path, user: str, pod_context: Any, message: str
) -> None:
    the_pod, container = pod(pod_context)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_as(the_pod, container, image_with_users(tmp_path, user))
