"""Which user and groups a container of an image runs as, by the kubelet's and the runtime's rules."""

from __future__ import annotations

from dataclasses import dataclass

from kubecp.node.api import Obj
from kubecp.node.environment import ConfigError
from kubecp.node.images import Image, resolve_in_root


@dataclass(frozen=True)
class RunAs:
    """The process's identity."""

    uid: int
    gid: int
    #: Supplementary groups (the primary group included, as runtimes set them).
    groups: tuple[int, ...]
    #: The user's home in the image's /etc/passwd, else ``/``: HOME unless the pod sets it.
    home: str


@dataclass(frozen=True)
class _Passwd:
    name: str
    uid: int
    gid: int
    home: str


def _read_image_file(image: Image, path: str) -> list[list[str]]:
    try:
        text = resolve_in_root(image.rootfs, path).read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _passwd(image: Image) -> list[_Passwd]:
    entries = []
    for fields in _read_image_file(image, "/etc/passwd"):
        if len(fields) >= 6 and fields[2].isdigit() and fields[3].isdigit():
            entries.append(_Passwd(fields[0], int(fields[2]), int(fields[3]), fields[5] or "/"))
    return entries


def _groups(image: Image) -> list[tuple[str, int, list[str]]]:
    groups = []
    for fields in _read_image_file(image, "/etc/group"):
        if len(fields) >= 4 and fields[2].isdigit():
            groups.append((fields[0], int(fields[2]), [m for m in fields[3].split(",") if m]))
    return groups


def pod_description(pod: Obj) -> str:
    """How the kubelet names a pod in messages: ``name_namespace(uid)``."""
    meta = pod["metadata"]
    return f"{meta['name']}_{meta['namespace']}({meta['uid']})"


def _setting(pod: Obj, container: Obj, key: str) -> object:
    """A security setting of the container, else of the pod."""
    value = (container.get("securityContext") or {}).get(key)
    if value is None:
        value = (pod["spec"].get("securityContext") or {}).get(key)
    return value


def run_as(pod: Obj, container: Obj, image: Image) -> RunAs:
    """The user of ``container``: runAsUser/runAsGroup, else the image's USER; runAsNonRoot enforced.

    Raises ConfigError (kubelet: CreateContainerConfigError) when runAsNonRoot cannot hold, and when
    the image's user is not in its /etc/passwd (the runtime's CreateContainerError).
    """
    where = f'(pod: "{pod_description(pod)}", container: {container["name"]})'
    run_as_user = _setting(pod, container, "runAsUser")
    run_as_group = _setting(pod, container, "runAsGroup")
    non_root = bool(_setting(pod, container, "runAsNonRoot"))
    user_part, _, group_part = image.config.user.partition(":")
    if non_root:
        if run_as_user is not None:
            if int(str(run_as_user)) == 0:
                raise ConfigError(f"container's runAsUser breaks non-root policy {where}")
        elif user_part and not user_part.isdigit():
            raise ConfigError(
                f"container has runAsNonRoot and image has non-numeric user ({user_part}), "
                f"cannot verify user is non-root {where}"
            )
        elif not user_part or int(user_part) == 0:
            raise ConfigError(f"container has runAsNonRoot and image will run as root {where}")
    passwd = _passwd(image)
    entry: _Passwd | None
    if run_as_user is not None:
        uid = int(str(run_as_user))
        entry = next((e for e in passwd if e.uid == uid), None)
    elif user_part.isdigit() or not user_part:
        uid = int(user_part or 0)
        entry = next((e for e in passwd if e.uid == uid), None)
    else:
        entry = next((e for e in passwd if e.name == user_part), None)
        if entry is None:
            raise ConfigError(f"unable to find user {user_part}: no matching entries in passwd file")
        uid = entry.uid
    groups = _groups(image)
    if run_as_group is not None:
        gid = int(str(run_as_group))
    elif group_part.isdigit():
        gid = int(group_part)
    elif group_part:
        found = next((g for g in groups if g[0] == group_part), None)
        if found is None:
            raise ConfigError(f"unable to find group {group_part}: no matching entries in group file")
        gid = found[1]
    else:
        gid = entry.gid if entry is not None else 0
    supplementary = [gid]
    if entry is not None:
        # The image's /etc/group memberships of the user (supplementalGroupsPolicy Merge, the default).
        supplementary += [g[1] for g in groups if entry.name in g[2]]
    pod_context = pod["spec"].get("securityContext") or {}
    supplementary += [int(g) for g in pod_context.get("supplementalGroups") or []]
    if pod_context.get("fsGroup") is not None:
        supplementary.append(int(pod_context["fsGroup"]))
    return RunAs(uid, gid, tuple(dict.fromkeys(supplementary)), entry.home if entry is not None else "/")
