"""The operator's reads of its kopf indices: every one it reads is registered and handed over at start."""

from __future__ import annotations

import inspect
from datetime import timedelta

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
