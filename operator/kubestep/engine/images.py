"""A run keeps the image it started with: the image reference pinned to the digest its first pod ran.

A tag (``registry/contacts:1.4``, ``:latest``) may be pushed again while a run is in flight; its later
steps must still run the code its first steps ran, or a replay could meet steps that the new code no
longer reaches. The first step pod's ``imageID`` (what the container runtime actually started, as
``registry/repo@sha256:...``) names that code; every later pod of the run uses the workflow's repository
at that digest. All pure.
"""

from __future__ import annotations

import re

#: A content digest as registries and runtimes write it (``sha256:<64 hex>``, or another algorithm).
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
#: What some runtimes put before a pulled image's reference in ``imageID`` (Docker's shim).
_RUNTIME_PREFIXES = ("docker-pullable://", "docker://")


def by_digest(image: str) -> bool:
    """Whether ``image`` already names its content (``repo@sha256:...``): it is used as is."""
    return "@" in image


def repository(image: str) -> str:
    """``image`` without its tag or digest (``registry:5000/team/contacts:1.4`` gives
    ``registry:5000/team/contacts``): a colon after the last slash starts the tag, one before it belongs to
    the registry's port.
    """
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def digest_of(image_id: str) -> str | None:
    """The manifest digest in a container's ``imageID`` (``registry/repo@sha256:...``), or None.

    A bare ``sha256:...`` (an image loaded into the node rather than pulled from a registry) is the
    digest of the image's configuration, which no registry serves by that name: it cannot pin anything.
    """
    reference = image_id.strip()
    for prefix in _RUNTIME_PREFIXES:
        reference = reference.removeprefix(prefix)
    if "@" not in reference:
        return None
    digest = reference.rsplit("@", 1)[1]
    return digest if _DIGEST.fullmatch(digest) else None


def pin(image: str, image_id: str) -> str | None:
    """The reference later pods of a run use, given the workflow's ``image`` and the ``imageID`` its first
    pod reported: the image's repository at that digest, or ``image`` itself if it names a digest already.
    None when the runtime reported no usable digest (the run then goes on with ``image`` as written)."""
    if not image_id:
        return None
    if by_digest(image):
        return image
    digest = digest_of(image_id)
    return None if digest is None else f"{repository(image)}@{digest}"
