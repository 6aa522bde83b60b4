"""Leader election: the pure decision, the settings, the elector loop against an in-memory Lease, and the
write check of the API module.

The decision takes the time this process *saw* the record change (its own monotonic clock), never the
``renewTime`` another machine wrote. pytest-asyncio is not a dependency: loops run with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from kubestep.controller.kube import AlreadyExists, Conflict, Kube, NotFound, NotLeading, Unavailable
from kubestep.controller.leader import (
    ElectionConfig,
    ElectionSettingError,
    LeaderElector,
    LeaseRecord,
    decide,
    election_config,
    release,
    seen_since,
)

ME = "operator-a"
OTHER = "operator-b"
WALL = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
EARLIER = WALL - timedelta(minutes=5)


def record(
    holder: str = OTHER,
    duration: int = 15,
    transitions: int = 3,
    acquired: datetime | None = EARLIER,
    renewed: datetime | None = EARLIER,
) -> LeaseRecord:
    return LeaseRecord(holder, duration, acquired, renewed, transitions)


# The decision --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "seen_at", "now", "expected"),
    [
        pytest.param(None, 0.0, 100.0, LeaseRecord(ME, 4, WALL, WALL, 0), id="no-lease-create-it"),
        pytest.param(
            record(holder=ME, duration=4, transitions=7),
            99.0,
            100.0,
            LeaseRecord(ME, 4, EARLIER, WALL, 7),
            id="mine-renew-keeps-acquire-time-and-transitions",
        ),
        pytest.param(
            record(holder=ME, duration=15, transitions=7),
            0.0,
            1000.0,
            LeaseRecord(ME, 4, EARLIER, WALL, 7),
            id="mine-renew-even-long-unseen-with-my-own-duration",
        ),
        pytest.param(
            record(holder=ME, acquired=None),
            99.0,
            100.0,
            LeaseRecord(ME, 4, WALL, WALL, 3),
            id="mine-without-acquire-time-gets-one",
        ),
        pytest.param(record(duration=15), 90.0, 100.0, None, id="other-seen-10s-ago-of-15-wait"),
        pytest.param(record(duration=15), 85.5, 100.0, None, id="other-just-before-expiry-wait"),
        pytest.param(
            record(duration=15),
            85.0,
            100.0,
            LeaseRecord(ME, 4, WALL, WALL, 4),
            id="other-expired-exactly-take",
        ),
        pytest.param(
            record(duration=15),
            10.0,
            100.0,
            LeaseRecord(ME, 4, WALL, WALL, 4),
            id="other-expired-long-ago-take",
        ),
        pytest.param(
            record(duration=15, renewed=WALL - timedelta(hours=1)),
            99.0,
            100.0,
            None,
            id="other-renew-time-old-by-my-clock-but-just-seen-change-wait",
        ),
        pytest.param(
            record(duration=15, renewed=WALL + timedelta(hours=1)),
            50.0,
            100.0,
            LeaseRecord(ME, 4, WALL, WALL, 4),
            id="other-renew-time-in-my-future-but-unchanged-for-50s-take",
        ),
        pytest.param(
            record(holder="", duration=1),
            99.9,
            100.0,
            LeaseRecord(ME, 4, WALL, WALL, 4),
            id="released-take-at-once",
        ),
        pytest.param(
            record(duration=0),
            99.9,
            100.0,
            LeaseRecord(ME, 4, WALL, WALL, 4),
            id="other-without-duration-take",
        ),
        pytest.param(record(duration=30), 80.0, 100.0, None, id="other-duration-counts-not-mine"),
    ],
)
def test_decide_whether_to_take_or_renew(
    observed: LeaseRecord | None, seen_at: float, now: float, expected: LeaseRecord | None
) -> None:
    verdict = decide(observed, ME, seen_at, now, WALL, lease_seconds=4)
    assert verdict.write == expected
    assert verdict.why


def test_a_refusal_names_the_holder_and_when_it_expires() -> None:
    verdict = decide(record(duration=15), ME, 90.0, 100.0, WALL, lease_seconds=4)
    assert verdict.write is None
    assert OTHER in verdict.why and "5.0s" in verdict.why


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        pytest.param(None, record(), 50.0, id="first-sight"),
        pytest.param(record(), record(), 10.0, id="unchanged-keeps-first-sight"),
        pytest.param(record(), record(renewed=WALL), 50.0, id="renewed"),
        pytest.param(record(), record(holder=ME), 50.0, id="new-holder"),
        pytest.param(record(), record(transitions=4), 50.0, id="transitions"),
    ],
)
def test_seen_since_restarts_on_any_change_of_the_record(
    previous: LeaseRecord | None, current: LeaseRecord, expected: float
) -> None:
    assert seen_since(previous, 10.0, current, 50.0) == expected


def test_release_hands_back_only_a_lease_of_ones_own() -> None:
    mine = record(holder=ME, transitions=5)
    assert release(mine, ME, WALL) == LeaseRecord("", 1, WALL, WALL, 5)
    assert release(record(holder=OTHER), ME, WALL) is None
    assert release(record(holder=""), ME, WALL) is None


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(
            {
                "holderIdentity": ME,
                "leaseDurationSeconds": 15,
                "acquireTime": "2025-03-01T11:55:00.123456Z",
                "renewTime": "2025-03-01T12:00:00.000001+00:00",
                "leaseTransitions": 2,
            },
            id="full",
        ),
        pytest.param({}, id="empty"),
    ],
)
def test_a_lease_spec_reads_back_as_written(spec: dict[str, Any]) -> None:
    parsed = LeaseRecord.from_spec(spec)
    assert LeaseRecord.from_spec(parsed.to_spec()) == parsed
    if spec:
        assert parsed.to_spec()["acquireTime"] == "2025-03-01T11:55:00.123456Z"
    else:
        assert parsed == LeaseRecord("", 0, None, None, 0)


# The settings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "option", "words"),
    [
        pytest.param({"lease_duration": 4.5}, "--leader-elect-lease-duration", "whole number", id="fraction"),
        pytest.param(
            {"lease_duration": 0.0}, "--leader-elect-lease-duration", "at least 1s", id="zero-lease"
        ),
        pytest.param(
            {"lease_duration": 10.0, "renew_deadline": 10.0},
            "--leader-elect-renew-deadline",
            "shorter",
            id="equal",
        ),
        pytest.param({"renew_deadline": 0.0}, "--leader-elect-renew-deadline", "above 0", id="zero-deadline"),
        pytest.param(
            {"renew_deadline": 2.0, "retry_period": 2.0},
            "--leader-elect-retry-period",
            "shorter",
            id="retry-slow",
        ),
        pytest.param({"retry_period": 0.0}, "--leader-elect-retry-period", "above 0", id="zero-retry"),
        pytest.param({"name": ""}, "--leader-elect-id", "empty", id="no-name"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_option(
    settings: dict[str, Any], option: str, words: str
) -> None:
    with pytest.raises(ElectionSettingError) as raised:
        election_config(namespace="ns", identity=ME, **settings)
    assert raised.value.option == option
    assert words in str(raised.value)


def test_identity_and_namespace_come_from_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "kubestep-7d9f-x2x")
    monkeypatch.setenv("POD_NAMESPACE", "kubestep-system")
    config = election_config()
    assert (config.identity, config.namespace, config.name) == (
        "kubestep-7d9f-x2x",
        "kubestep-system",
        "kubestep-operator",
    )
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (15.0, 10.0, 2.0)


def test_outside_a_pod_identity_is_host_and_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    config = election_config(lease_duration=4, renew_deadline=3, retry_period=0.5)
    assert config.identity.endswith(f"_{__import__('os').getpid()}")
    assert config.namespace  # the ServiceAccount's namespace in a pod, else `default`


# The elector, against an in-memory Lease ----------------------------------------------------------------


class FakeLeases:
    """One Lease with the API server's optimistic concurrency (``resourceVersion``)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.holders: list[str] = []

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.lease = stored
        holder = stored["spec"].get("holderIdentity", "")
        if not self.holders or self.holders[-1] != holder:
            self.holders.append(holder)
        return copy.deepcopy(stored)


class FakeLeaseApi:
    """One process's view of :class:`FakeLeases`; ``down`` cuts it off (a partition), ``hung`` leaves every
    call unanswered until its request timeout, ``after_write`` runs once a write is stored."""

    def __init__(self, leases: FakeLeases) -> None:
        self.leases = leases
        self.down = False
        self.hung = False
        self.after_write: Callable[[], object] | None = None

    async def _reach(self, timeout: float) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise Unavailable("connection refused")
        if self.hung:
            await asyncio.sleep(timeout)
            raise Unavailable("read timed out")

    def _wrote(self, stored: dict[str, Any]) -> dict[str, Any]:
        if self.after_write is not None:
            self.after_write()
        return stored

    async def get_lease(self, namespace: str, name: str, timeout: float) -> dict[str, Any]:
        await self._reach(timeout)
        if self.leases.lease is None:
            raise NotFound("not found", 404)
        return copy.deepcopy(self.leases.lease)

    async def create_lease(self, namespace: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        await self._reach(timeout)
        if self.leases.lease is not None:
            raise AlreadyExists("exists", 409)
        return self._wrote(self.leases._store(body))

    async def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        await self._reach(timeout)
        assert self.leases.lease is not None
        if body["metadata"]["resourceVersion"] != self.leases.lease["metadata"]["resourceVersion"]:
            raise Conflict("changed", 409)
        return self._wrote(self.leases._store(body))


#: A lease of 1 s (the smallest a Lease records), a deadline of 0.5 s, tries every 0.05 s.
FAST = {
    "namespace": "ns",
    "name": "lease",
    "lease_duration": 1.0,
    "renew_deadline": 0.5,
    "retry_period": 0.05,
}


class Candidate:
    """An elector with its fake API, recording when it started and stopped leading."""

    def __init__(self, identity: str, leases: FakeLeases, log: list[tuple[str, str, float]]) -> None:
        self.api = FakeLeaseApi(leases)
        self.identity = identity
        self.log = log
        self.elector = LeaderElector(
            ElectionConfig(identity=identity, **FAST),  # type: ignore[arg-type]
            self.api,
            on_started=self._started,
            on_stopped=self._stopped,
        )
        self.task: asyncio.Task[None] | None = None

    async def _started(self) -> None:
        self.log.append(("started", self.identity, time.monotonic()))

    async def _stopped(self) -> None:
        self.log.append(("stopped", self.identity, time.monotonic()))

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_of_two_candidates_exactly_one_leads_and_the_other_stands_by() -> None:
    async def scenario() -> None:
        leases, log = FakeLeases(), []
        a, b = Candidate(ME, leases, log), Candidate(OTHER, leases, log)
        a.start()
        b.start()
        await until(lambda: any(e[0] == "started" for e in log))
        await asyncio.sleep(0.3)  # several renewals and standby attempts
        assert [e[:2] for e in log] == [("started", leases.holders[0])]
        assert a.elector.may_write() != b.elector.may_write()
        assert leases.holders == [log[0][1]]
        await a.stop()
        await b.stop()

    run(scenario)


def test_a_partitioned_leader_stops_writing_before_the_standby_takes_over() -> None:
    async def scenario() -> None:
        leases, log = FakeLeases(), []
        a, b = Candidate(ME, leases, log), Candidate(OTHER, leases, log)
        a.start()
        await until(a.elector.may_write)
        b.start()
        await asyncio.sleep(0.2)
        cut = time.monotonic()
        a.api.down = True
        await until(b.elector.may_write, timeout=5)
        assert [e[:2] for e in log] == [("started", ME), ("stopped", ME), ("started", OTHER)]
        stopped, taken = log[1][2], log[2][2]
        assert not a.elector.may_write()
        # A stopped within its renew deadline of the cut; B waited a whole lease after it last saw a renewal.
        assert stopped - cut <= FAST["renew_deadline"] + 0.2
        assert taken - cut >= FAST["lease_duration"] - FAST["retry_period"]
        assert leases.lease is not None and leases.lease["spec"]["leaseTransitions"] == 1
        # Back on the network, A stays a candidate while B renews.
        a.api.down = False
        await asyncio.sleep(0.5)
        assert leases.holders == [ME, OTHER] and not a.elector.may_write()
        await a.stop()
        await b.stop()

    run(scenario)


def test_a_frozen_leader_may_not_write_the_moment_it_wakes_past_its_deadline() -> None:
    async def scenario() -> None:
        leases, log = FakeLeases(), []
        a = Candidate(ME, leases, log)
        a.start()
        await until(a.elector.may_write)
        # Block the event loop, as SIGSTOP would: no renewal, no callback can run meanwhile.
        time.sleep(FAST["renew_deadline"] + 0.1)
        assert not a.elector.may_write()
        # Nobody took the Lease meanwhile: once its loop runs again, it stops, then takes it back.
        await until(lambda: [e[:2] for e in log][-1:] == [("started", ME)] and len(log) == 3)
        assert [e[:2] for e in log] == [("started", ME), ("stopped", ME), ("started", ME)]
        assert a.elector.may_write()
        await a.stop()

    run(scenario)


def test_a_released_lease_is_taken_at_once_not_after_it_expires() -> None:
    async def scenario() -> None:
        leases, log = FakeLeases(), []
        a, b = Candidate(ME, leases, log), Candidate(OTHER, leases, log)
        a.start()
        await until(a.elector.may_write)
        b.start()
        await asyncio.sleep(0.2)
        await a.stop()
        await a.elector.release()
        released = time.monotonic()
        assert not a.elector.may_write()
        await until(b.elector.may_write)
        assert time.monotonic() - released < FAST["lease_duration"] / 2
        assert leases.holders == [ME, "", OTHER]
        await b.stop()

    run(scenario)


def test_a_shutdown_that_lands_as_a_renewal_completes_still_stops_the_elector() -> None:
    # On Python 3.11 asyncio.wait_for drops a cancel that arrives just as the call it wraps returns; an
    # elector renewing through it ignored the operator's shutdown and kept the Lease renewed forever.
    async def scenario() -> None:
        leases, log = FakeLeases(), []
        a = Candidate(ME, leases, log)
        a.start()
        await until(a.elector.may_write)
        task = a.task
        assert task is not None
        # The next renewal's write schedules the shutdown: it lands before the elector sees the answer.
        a.api.after_write = lambda: asyncio.get_running_loop().call_soon(task.cancel)
        done, _ = await asyncio.wait({task}, timeout=5)
        a.api.after_write = None
        while not task.done():  # only when it failed: end the elector so that the loop can close
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        assert done, "the elector ignored its cancellation and went on renewing the Lease"
        assert task.cancelled()
        assert [e[:2] for e in log] == [("started", ME), ("stopped", ME)]
        assert not a.elector.may_write()
        version = leases.version
        await asyncio.sleep(FAST["retry_period"] * 4)
        assert leases.version == version  # nothing renews it any more

    run(scenario)


def test_a_leader_whose_renewal_is_never_answered_stops_at_its_deadline_and_campaigns_on() -> None:
    async def scenario() -> None:
        leases, log = FakeLeases(), []
        a = Candidate(ME, leases, log)
        a.start()
        await until(a.elector.may_write)
        a.api.hung = True
        await until(lambda: len(log) == 2)
        # It stopped while its renewal still hung: the deadline, not an answer, ended its leadership.
        assert [e[:2] for e in log] == [("started", ME), ("stopped", ME)]
        assert not a.elector.may_write() and a.task is not None and not a.task.done()
        # The calls answer again: the campaign went on and takes the Lease back.
        a.api.hung = False
        await until(a.elector.may_write)
        assert [e[:2] for e in log] == [("started", ME), ("stopped", ME), ("started", ME)]
        await a.stop()

    run(scenario)


def test_release_leaves_a_lease_someone_else_holds_alone() -> None:
    async def scenario() -> None:
        leases, log = FakeLeases(), []
        b = Candidate(OTHER, leases, log)
        b.start()
        await until(b.elector.may_write)
        a = Candidate(ME, leases, log)
        version = leases.version
        await a.elector.release()
        await b.stop()
        assert leases.holders == [OTHER]
        assert leases.version >= version

    run(scenario)


# The API module's write check ---------------------------------------------------------------------------


def unreachable_kube(may_write: Callable[[], bool]) -> Kube:
    """A Kube whose every request fails to connect: a call that gets as far as sending says Unavailable."""
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"
    return Kube(client.ApiClient(configuration), may_write=may_write)


JOB = {"metadata": {"name": "j"}}
RUN = {
    "apiVersion": "kubestep.dev/v1alpha1",
    "kind": "WorkflowRun",
    "metadata": {"name": "r", "namespace": "ns", "resourceVersion": "1"},
}
WRITES: dict[str, Callable[[Kube], Coroutine[Any, Any, Any]]] = {
    "create": lambda k: k.create("workflowruns", "ns", RUN),
    "replace_status": lambda k: k.replace_status("workflowruns", RUN, {}),
    "merge_patch": lambda k: k.merge_patch("workflowruns", "ns", "r", {"spec": {"cancel": True}}),
    "create_job": lambda k: k.create_job("ns", JOB),
    "delete_job": lambda k: k.delete_job("ns", "j"),
    "delete_pod": lambda k: k.delete_pod("ns", "p"),
    "create_secret": lambda k: k.create_secret("ns", JOB),
    "delete_secret": lambda k: k.delete_secret("ns", "s"),
    "post_event": lambda k: k.post_event("ns", {**JOB, "involvedObject": {"name": "r"}}),
}


@pytest.mark.parametrize("write", WRITES)
def test_a_write_is_not_sent_when_this_process_does_not_lead(write: str) -> None:
    with pytest.raises(NotLeading):
        asyncio.run(WRITES[write](unreachable_kube(lambda: False)))
    # The same call, allowed, is sent (and fails to connect).
    with pytest.raises(Unavailable):
        asyncio.run(WRITES[write](unreachable_kube(lambda: True)))


def test_reads_and_lease_calls_are_never_held_back() -> None:
    kube = unreachable_kube(lambda: False)
    with pytest.raises(Unavailable):
        asyncio.run(kube.get("workflowruns", "ns", "r"))
    with pytest.raises(Unavailable):
        asyncio.run(kube.get_lease("ns", "lease", timeout=1))


def test_an_unreadable_lease_or_an_api_outage_does_not_end_the_campaign() -> None:
    async def scenario() -> None:
        leases, log = FakeLeases(), []
        leases._store(
            {"metadata": {"name": "lease"}, "spec": {"holderIdentity": OTHER, "acquireTime": "not a time"}}
        )
        a = Candidate(ME, leases, log)
        a.api.down = True
        a.start()
        await asyncio.sleep(0.2)
        a.api.down = False
        await asyncio.sleep(0.2)
        assert not log and not a.task.done()  # type: ignore[union-attr]
        # Someone repairs the Lease (an expired one of OTHER's): the campaign goes on and takes it.
        leases._store(
            {"metadata": {"name": "lease"}, "spec": {"holderIdentity": OTHER, "leaseDurationSeconds": 0}}
        )
        await until(a.elector.may_write)
        assert [e[:2] for e in log] == [("started", ME)]
        await a.stop()

    run(scenario)


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        pytest.param(
            ["--leader-elect-renew-deadline", "20s"],
            "--leader-elect-renew-deadline",
            "shorter",
            id="deadline",
        ),
        pytest.param(
            ["--leader-elect-lease-duration", "1.5s"], "--leader-elect-lease-duration", "whole", id="fraction"
        ),
        pytest.param(
            ["--leader-elect-retry-period", "soon"], "--leader-elect-retry-period", "'30s'", id="unparsable"
        ),
    ],
)
def test_the_command_refuses_election_settings_that_cannot_work(
    args: list[str], option: str, words: str
) -> None:
    from typer.testing import CliRunner

    from kubestep.cli.main import app

    result = CliRunner().invoke(app, ["operator", "--leader-elect", *args])
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert option in text and words in text, text
