"""Read Workflow and Event resources from YAML files, with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubestep.api.base import validation_problems
from kubestep.api.event import Event
from kubestep.api.workflow import Workflow
from kubestep.engine.cel import check


class ManifestError(ValueError):
    """A YAML file that does not hold what it should."""


def _documents(path: Path) -> list[dict[str, Any]]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path} is not valid YAML: {exc}") from None
    for doc in docs:
        if not isinstance(doc, dict):
            raise ManifestError(f"{path}: every YAML document must be a mapping, got {type(doc).__name__}")
    return docs


def _explain(path: Path, kind: str, exc: ValidationError) -> ManifestError:
    problems = "\n".join(f"  {problem}" for problem in validation_problems(exc))
    return ManifestError(f"{path}: invalid {kind}:\n{problems}")


def load_workflows(path: Path) -> dict[str, Workflow]:
    """Every ``Workflow`` in the file, by name."""
    workflows: dict[str, Workflow] = {}
    for doc in _documents(path):
        if doc.get("kind") != "Workflow":
            continue
        try:
            wf = Workflow.model_validate(doc)
        except ValidationError as exc:
            raise _explain(path, "Workflow", exc) from None
        if not wf.metadata.name:
            raise ManifestError(f"{path}: a Workflow has no metadata.name; give it one")
        for index, trigger in enumerate(wf.spec.triggers):
            problem = trigger.if_ and check(trigger.if_)
            if problem:
                raise ManifestError(
                    f"{path}: workflow {wf.metadata.name}: spec.triggers[{index}].if: {problem}"
                )
        workflows[wf.metadata.name] = wf
    if not workflows:
        raise ManifestError(f"{path} holds no Workflow (kind: Workflow, apiVersion: kubestep.dev/v1alpha1)")
    return workflows


def load_event(path: Path) -> Event:
    """The one ``Event`` in the file."""
    events = [d for d in _documents(path) if d.get("kind") == "Event"]
    if len(events) != 1:
        raise ManifestError(f"{path} must hold exactly one Event (kind: Event), found {len(events)}")
    try:
        return Event.model_validate(events[0])
    except ValidationError as exc:
        raise _explain(path, "Event", exc) from None
