"""Materialize a pod's volumes as directories on the node.

Supported: secret, configMap, projected (secret, configMap, downwardAPI,
serviceAccountToken), downwardAPI, emptyDir and hostPath. Anything else keeps
the pod waiting, with the reason in a FailedMount event, as an unmountable
volume would on a real node.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from kubecp.node.api import Api, Obj
from kubecp.node.environment import field_value

DEFAULT_MODE = 0o644
# Volumes whose files the node writes (and so owns and may give to the pod's users).
_WRITTEN_KINDS = frozenset({"secret", "configMap", "downwardAPI", "projected"})


class VolumeError(Exception):
    """A volume cannot be set up (yet): the message is what ``kubectl describe`` would show."""


def prepare_volumes(api: Api, pod: Obj, directory: Path) -> dict[str, Path]:
    """Write every volume of ``pod`` under ``directory``; return each volume's host path by name."""
    paths: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "hostPath" in volume:
            paths[name] = Path(volume["hostPath"]["path"])
            continue
        target = directory / name
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            # As the kubelet makes it: writable by whatever user the containers run as.
            target.chmod(0o777)
        else:
            files = _volume_files(api, pod, volume)
            _write_files(target, files)
        set_ownership(pod, volume, target)
        paths[name] = target
    return paths


def _effective_run_as_user(pod: Obj, container: Obj) -> int | None:
    value = (container.get("securityContext") or {}).get("runAsUser")
    if value is None:
        value = (pod["spec"].get("securityContext") or {}).get("runAsUser")
    return None if value is None else int(value)


def set_ownership(pod: Obj, volume: Obj, target: Path) -> None:
    """Give the volume's files to the pod's ``fsGroup`` as the kubelet does (SetVolumeOwnership).

    Group-owned by fsGroup, group-readable (and writable for an emptyDir), directories setgid. Without
    fsGroup, a projected volume's files belong to the containers' common runAsUser, if they have one,
    so that a token of mode 0600 is still theirs to read. Only a node running as root can do this.
    """
    if os.geteuid() != 0 or not ({"emptyDir", *_WRITTEN_KINDS} & set(volume)):
        return
    fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
    if fs_group is None:
        if "projected" not in volume:
            return
        containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
        users = {_effective_run_as_user(pod, container) for container in containers}
        owner = users.pop() if len(users) == 1 else None
        if owner is None:
            return
        for path in target.rglob("*"):
            if not path.is_dir():
                os.lchown(path, owner, -1)
        return
    writable = "emptyDir" in volume
    for path in [target, *target.rglob("*")]:
        if path.is_symlink():
            continue
        os.chown(path, -1, int(fs_group))
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            mode |= stat.S_ISGID | 0o050 | (0o020 if writable else 0)
        else:
            mode |= 0o040 | (0o020 if writable else 0)
        path.chmod(mode)


def _volume_files(api: Api, pod: Obj, volume: Obj) -> dict[str, tuple[bytes, int]]:
    namespace = pod["metadata"]["namespace"]
    if "secret" in volume:
        source = volume["secret"]
        return _keyed_files(
            "secret",
            source.get("secretName", ""),
            _secret_data(api, namespace, source.get("secretName", "")),
            source,
        )
    if "configMap" in volume:
        source = volume["configMap"]
        return _keyed_files(
            "configmap",
            source.get("name", ""),
            _config_map_data(api, namespace, source.get("name", "")),
            source,
        )
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        return _downward_files(pod, source.get("items") or [], source.get("defaultMode", DEFAULT_MODE))
    if "projected" in volume:
        return _projected_files(api, pod, volume["projected"])
    kinds = sorted(set(volume) - {"name"})
    raise VolumeError(
        f"volume {volume['name']!r}: {', '.join(kinds)} volumes are not supported by the process node"
    )


def _secret_data(api: Api, namespace: str, name: str) -> dict[str, bytes] | None:
    secret = api.get_secret(namespace, name)
    if secret is None:
        return None
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


def _config_map_data(api: Api, namespace: str, name: str) -> dict[str, bytes] | None:
    config_map = api.get_config_map(namespace, name)
    if config_map is None:
        return None
    data = {key: value.encode() for key, value in (config_map.get("data") or {}).items()}
    data.update({key: base64.b64decode(value) for key, value in (config_map.get("binaryData") or {}).items()})
    return data


def _keyed_files(
    kind: str, name: str, data: dict[str, bytes] | None, source: Obj
) -> dict[str, tuple[bytes, int]]:
    """The files of a secret/configMap source: every key, or the ``items`` chosen."""
    mode = source.get("defaultMode", DEFAULT_MODE)
    if data is None:
        if source.get("optional"):
            return {}
        raise VolumeError(f'{kind} "{name}" not found')
    items = source.get("items")
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise VolumeError(f'{kind} "{name}" has no key {item["key"]!r}')
        files[item["path"]] = (data[item["key"]], item.get("mode", mode))
    return files


def _downward_files(pod: Obj, items: list[Obj], mode: int) -> dict[str, tuple[bytes, int]]:
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            raise VolumeError(
                f"downwardAPI item {item['path']!r}: only fieldRef is supported by the process node"
            )
        files[item["path"]] = (value.encode(), item.get("mode", mode))
    return files


def _projected_files(api: Api, pod: Obj, projected: Obj) -> dict[str, tuple[bytes, int]]:
    mode = projected.get("defaultMode", DEFAULT_MODE)
    namespace = pod["metadata"]["namespace"]
    files: dict[str, tuple[bytes, int]] = {}
    for source in projected.get("sources") or []:
        if "secret" in source:
            spec: dict[str, Any] = {"defaultMode": mode, **source["secret"]}
            name = spec.get("name", "")
            files.update(_keyed_files("secret", name, _secret_data(api, namespace, name), spec))
        elif "configMap" in source:
            spec = {"defaultMode": mode, **source["configMap"]}
            name = spec.get("name", "")
            files.update(_keyed_files("configmap", name, _config_map_data(api, namespace, name), spec))
        elif "downwardAPI" in source:
            files.update(_downward_files(pod, source["downwardAPI"].get("items") or [], mode))
        elif "serviceAccountToken" in source:
            token_source = source["serviceAccountToken"]
            token = api.request_token(
                pod, token_source.get("audience"), int(token_source.get("expirationSeconds", 3600))
            )
            files[token_source["path"]] = (token.encode(), mode)
        else:
            kinds = ", ".join(sorted(source))
            raise VolumeError(f"projected source {kinds} is not supported by the process node")
    return files


def _write_files(directory: Path, files: dict[str, tuple[bytes, int]]) -> None:
    # Written into a fresh directory that then replaces the old one, so a container
    # never sees half of an update.
    staging = directory.with_name(directory.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for relative, (content, mode) in files.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
