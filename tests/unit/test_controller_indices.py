"""The operator's reads of its kopf indices: every one it reads is registered and handed over at start."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

import kopf

from kubestep.controller import handlers
from kubestep.controller.context import Indices


def registered() -> set[str]:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, timedelta(hours=1))
    return {str(h.id) for h in registry._indexing.get_all_handlers()}


def test_every_index_the_reconcilers_read_is_registered() -> None:
    assert set(handlers.READ_INDICES) <= registered()
    assert set(handlers.KEY_INDICES.values()) <= registered()


def test_every_read_of_the_indices_finds_its_index_among_those_handed_over() -> None:
    # An index read but not handed over fails every pass that reads it (a KeyError), not a test of the fake.
    indices = handlers.KopfIndices({name: {} for name in handlers.READ_INDICES})  # type: ignore[misc]
    methods = [n for n, _ in inspect.getmembers(Indices, inspect.isfunction) if not n.startswith("_")]
    assert methods
    for name in methods:
        arity = len(inspect.signature(getattr(Indices, name)).parameters) - 1
        result = getattr(indices, name)(*["ns"] * arity)
        assert result in (None, []), (name, result)


def index_function(index: str) -> Any:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, timedelta(hours=1))
    return next(h.fn for h in registry._indexing.get_all_handlers() if h.id == index)


def test_the_workflows_an_event_reaches_are_indexed_by_their_triggers_and_on_failure() -> None:
    index = index_function("workflows_by_event")
    spec = {
        "triggers": [{"event": "app/a"}, {"cron": "0 * * * *"}],
        "onFailure": {"function": "m:on_failure"},
    }
    assert index(namespace="ns", name="w", spec=spec) == {
        ("ns", "app/a"): "w",
        ("ns", "kubestep/run.failed"): "w",
    }
    assert index(namespace="ns", name="w", spec={"triggers": [{"cron": "0 * * * *"}]}) == {}


def test_events_of_a_name_are_picked_by_id_before_they_are_read() -> None:
    bodies = [
        {"metadata": {"name": f"e{i}", "namespace": "ns"}, "spec": {"name": "app/a", "id": f"id{i % 2}"}}
        for i in range(4)
    ]
    stores: dict[str, Any] = {name: {} for name in handlers.READ_INDICES}
    stores["events_by_name"] = {("ns", "app/a"): bodies}
    indices = handlers.KopfIndices(stores)
    assert [e.metadata.name for e in indices.events_named("ns", "app/a", "id1")] == ["e1", "e3"]
    assert [e.metadata.name for e in indices.events_named("ns", "app/a")] == ["e0", "e1", "e2", "e3"]
