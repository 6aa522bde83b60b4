"""The start gates as the operator applies them, against an in-memory API: several workers handling a
burst of Events at once never start more than the limit allows, a restarted operator counts what is there,
and a replaced run is cancelled naming the Event that replaced it."""

from __future__ import annotations

import asyncio
from typing import Any

from fake_kube import FakeKube
from test_controller_reconcilers import NS, World, event_obj, workflow_obj

from kubestep.controller.context import Key
from kubestep.controller.events import reconcile_event
from kubestep.controller.kube import EVENTS, RUNS, WORKFLOWS, Obj


class Interleaving(FakeKube):
    """An API whose reads and creates let other coroutines run in between, as real requests do."""

    async def list_runs(self, namespace: str, workflow_label: str) -> list[Obj]:
        await asyncio.sleep(0)
        found = await super().list_runs(namespace, workflow_label)
        await asyncio.sleep(0)
        return found

    async def create(self, plural: str, namespace: str, body: Obj) -> Obj:
        await asyncio.sleep(0)
        return await super().create(plural, namespace, body)


def world_with(**flow: Any) -> World:
    world = World()
    world.kube = Interleaving()
    world.ctl = world.operator()
    workflow = workflow_obj()
    workflow["spec"].update(flow)
    world.kube.put(WORKFLOWS, workflow)
    return world


def publish(world: World, count: int, prefix: str = "ev", tenant: str = "acme") -> list[str]:
    names = []
    for n in range(count):
        obj = event_obj(f"{prefix}-{n}")
        obj["spec"]["data"]["tenant"] = tenant
        world.kube.put(EVENTS, obj)
        names.append(f"{prefix}-{n}")
    return names


def handle_at_once(world: World, names: list[str]) -> None:
    """Every Event handled by its own worker, all at the same time."""

    async def burst() -> None:
        await asyncio.gather(*(reconcile_event(world.ctl, Key("event", NS, n)) for n in names))

    asyncio.run(burst())


def reasons(world: World, names: list[str]) -> list[str]:
    found = []
    for name in names:
        obj = world.kube.peek(EVENTS, NS, name)
        assert obj is not None
        (condition,) = [c for c in obj["status"]["conditions"] if c["type"] == "Processed"]
        found.append(condition["reason"])
    return sorted(found)


def test_a_burst_handled_by_many_workers_starts_exactly_the_limit() -> None:
    world = world_with(rateLimit={"limit": 3, "period": "1m", "key": "event.data.tenant"})
    acme = publish(world, 10)
    globex = publish(world, 2, "other", tenant="globex")
    handle_at_once(world, acme + globex)
    assert len(world.kube.objects(RUNS, NS)) == 5
    assert reasons(world, acme) == ["RateLimited"] * 7 + ["RunsStarted"] * 3
    assert reasons(world, globex) == ["RunsStarted"] * 2


def test_a_restarted_operator_counts_the_runs_there_are() -> None:
    world = world_with(rateLimit={"limit": 1, "period": "1m"})
    (first,) = publish(world, 1, "first")
    handle_at_once(world, [first])
    world.restart()
    (second,) = publish(world, 1, "second")
    handle_at_once(world, [second])
    assert reasons(world, [first, second]) == ["RateLimited", "RunsStarted"]
    # Handled again (its status save lost, say), the first Event still finds its own run, not a limit.
    obj = world.kube.peek(EVENTS, NS, first)
    assert obj is not None
    obj["status"] = {}
    world.kube.put(EVENTS, obj)
    handle_at_once(world, [first])
    assert reasons(world, [first]) == ["RunsStarted"]
    assert len(world.kube.objects(RUNS, NS)) == 1


def test_singleton_skip_and_cancel_against_the_api() -> None:
    world = world_with(singleton={"key": "event.data.tenant"})
    names = publish(world, 4)
    handle_at_once(world, names)
    assert len(world.kube.objects(RUNS, NS)) == 1
    assert reasons(world, names) == ["RunsStarted"] + ["SingletonSkipped"] * 3

    world = world_with(singleton={"key": "event.data.tenant", "mode": "Cancel"})
    (first,) = publish(world, 1, "first")
    handle_at_once(world, [first])
    (old,) = world.kube.objects(RUNS, NS)
    (second,) = publish(world, 1, "second")
    handle_at_once(world, [second])
    replaced = world.kube.peek(RUNS, NS, old["metadata"]["name"])
    assert replaced is not None and replaced["spec"]["cancel"] is True
    assert "cancelled by Event second-0" in replaced["spec"]["cancelReason"]
    assert len(world.kube.objects(RUNS, NS)) == 2
    assert reasons(world, [second]) == ["RunsStarted"]
