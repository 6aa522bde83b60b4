"""A container's environment and command line, as the kubelet computes them."""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from kubernetes.utils import parse_quantity

from kubecp.node.api import Api, Obj
from kubecp.node.images import ImageConfig

NODE_IP = "127.0.0.1"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ConfigError(Exception):
    """The container's configuration refers to something missing (kubelet: CreateContainerConfigError)."""


@dataclass
class ImageStandIn:
    """What an image would contribute to the environment; here, the node's Python environment.

    The image itself is ignored: every container runs on the node, with the
    virtualenv's ``bin`` first on PATH so that ``python`` and the project's
    commands resolve to the project's interpreter.
    """

    python_bin_dir: Path
    pythonpath: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """The environment variables an image would define."""
        # Processes run as the node's user, so HOME is that user's.
        env = {"PATH": f"{self.python_bin_dir}:{BASE_PATH}", "HOME": str(Path.home()), "LANG": "C.UTF-8"}
        if self.pythonpath:
            env["PYTHONPATH"] = ":".join(self.pythonpath)
        env.update(self.env)
        return env


def field_value(pod: Obj, path: str) -> str:
    """The value of a downward-API ``fieldRef.fieldPath``."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    subscript = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if subscript:
        return str((meta.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(values.items()))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        # The node runs pods in its own network: every IP is the node's.
        "status.hostIP": NODE_IP,
        "status.hostIPs": NODE_IP,
        "status.podIP": NODE_IP,
        "status.podIPs": NODE_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    if path.startswith("status."):
        return str(status.get(path.split(".", 1)[1], ""))
    raise ConfigError(f"unsupported fieldRef {path!r}")


def _resource_value(container: Obj, ref: Obj, node_allocatable: Mapping[str, str]) -> str:
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    quantity = (resources.get(kind) or {}).get(name)
    if quantity is None and kind == "requests":
        quantity = (resources.get("limits") or {}).get(name)
    if quantity is None:
        # As the kubelet: no limit means the node's allocatable amount.
        quantity = node_allocatable.get(name, "0")
    divisor = Decimal(parse_quantity(ref.get("divisor", "1")))  # type: ignore[no-untyped-call]
    value = Decimal(parse_quantity(quantity)) / divisor  # type: ignore[no-untyped-call]
    return str(math.ceil(value))


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, the rest stays."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def container_variables(
    api: Api,
    pod: Obj,
    container: Obj,
    service_env: Mapping[str, str],
    node_allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The variables the kubelet defines for ``container``: service links, envFrom, then env (later wins).

    These, and not the image's, are what ``$(VAR)`` in command and args refers to.
    """
    namespace = pod["metadata"]["namespace"]
    secrets: dict[str, dict[str, bytes] | None] = {}
    config_maps: dict[str, dict[str, str] | None] = {}

    def secret(name: str) -> dict[str, bytes] | None:
        if name not in secrets:
            found = api.get_secret(namespace, name)
            secrets[name] = (
                None
                if found is None
                else {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}
            )
        return secrets[name]

    def config_map(name: str) -> dict[str, str] | None:
        if name not in config_maps:
            found = api.get_config_map(namespace, name)
            config_maps[name] = None if found is None else dict(found.get("data") or {})
        return config_maps[name]

    defined: dict[str, str] = dict(service_env)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "secretRef" in source:
            ref = source["secretRef"]
            data = secret(ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'secret "{ref["name"]}" not found')
            defined.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
        elif "configMapRef" in source:
            ref = source["configMapRef"]
            cm = config_map(ref["name"])
            if cm is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'configmap "{ref["name"]}" not found')
            defined.update({prefix + k: v for k, v in cm.items()})

    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            defined[name] = _expand(var.get("value", ""), defined)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            defined[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            defined[name] = _resource_value(container, source["resourceFieldRef"], node_allocatable)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = secret(ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                what = (
                    f'secret "{ref["name"]}" not found'
                    if data is None
                    else f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}"
                )
                raise ConfigError(what)
            defined[name] = data[ref["key"]].decode(errors="replace")
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            cm = config_map(ref["name"])
            if cm is None or ref["key"] not in cm:
                if ref.get("optional"):
                    continue
                what = (
                    f'configmap "{ref["name"]}" not found'
                    if cm is None
                    else f"couldn't find key {ref['key']} in ConfigMap {namespace}/{ref['name']}"
                )
                raise ConfigError(what)
            defined[name] = cm[ref["key"]]
        else:
            raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
    return defined


def process_environment(pod: Obj, image: ImageStandIn, variables: Mapping[str, str]) -> dict[str, str]:
    """The environment the container's process gets: the image's, HOSTNAME, then ``variables``."""
    environment = image.environment()
    environment["HOSTNAME"] = pod["metadata"]["name"]
    environment.update(variables)
    return environment


def command_line(container: Obj, env: Mapping[str, str], image: ImageConfig | None = None) -> list[str]:
    """argv of the container: ``command`` + ``args`` with ``$(VAR)`` expanded from ``env``.

    ``env`` should be the container's own variables (:func:`container_variables`). With the
    ``image``'s configuration, by Kubernetes' rules: ``command`` replaces the image's ENTRYPOINT and
    CMD, ``args`` alone replace CMD; the image's own parts are not expanded.

    Without an image there is no ENTRYPOINT: a container without ``command``
    runs its ``args`` as the whole command line.
    """
    command = [_expand(arg, env) for arg in container.get("command") or []]
    args = [_expand(arg, env) for arg in container.get("args") or []]
    if image is None:
        if not command and not args:
            raise ConfigError(
                "no command: the process node runs this container in its own Python environment, "
                "so it needs `command` (or `args`)"
            )
        return [*command, *args]
    if command:
        argv = [*command, *args]
    elif args:
        argv = [*image.entrypoint, *args]
    else:
        argv = [*image.entrypoint, *image.cmd]
    if not argv:
        raise ConfigError("no command specified")
    return argv


def image_environment(
    pod: Obj, image: ImageConfig, variables: Mapping[str, str], home: str
) -> dict[str, str]:
    """The environment of a container of an image: the image's, HOSTNAME, then ``variables``; HOME last.

    HOME is the user's home in the image when neither the image nor the pod sets it, as runtimes do.
    """
    environment = image.environment()
    environment["HOSTNAME"] = pod["metadata"]["name"]
    environment.update(variables)
    environment.setdefault("HOME", home)
    return environment
