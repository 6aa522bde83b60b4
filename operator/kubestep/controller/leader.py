"""Leader election on a ``coordination.k8s.io/v1`` Lease, with the semantics of client-go's leaderelection.

Several operator processes may run; the one whose identity the Lease names (``holderIdentity``) is the
leader and the only one that reconciles. The others are candidates: they read the Lease every retry
period and take it once it has expired.

*Expired* is judged by each candidate's **own clock**: a Lease's record (holder, duration, renew time, …)
that has not changed for ``leaseDurationSeconds`` since this process *saw* it change has expired. The
``renewTime`` written by another machine is never compared with the local clock, so clock skew between
machines cannot make a live leader look dead. Every write carries the ``resourceVersion`` that was read:
of two candidates racing for an expired Lease the API server lets one win, the other gets a conflict.

A leader keeps writing only while its last successful renewal *started* less than the renew deadline
ago (:meth:`LeaderElector.may_write`, checked right before every write the operator sends). Another
process can take the Lease at the earliest a whole lease duration after it saw that renewal, and the
renew deadline is shorter than the lease duration: a leader that cannot renew (partitioned, frozen,
starved) stops writing before anyone else may start. That check reads a monotonic clock, so it holds
even when the leader's event loop has not run for a while (a ``SIGSTOP``, a long pause).

A leader that loses the Lease goes back to being a candidate (it does not exit): its reconcilers are
level-triggered and read the objects afresh, so nothing it holds in memory is stale in a way that matters,
and it stays Ready and warm for the next election.

The decisions (:func:`decide`, :func:`release`, :func:`seen_since`) are pure; :class:`LeaderElector` is
the loop that reads and writes the Lease through a :class:`LeaseApi`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kubestep.controller.kube import AlreadyExists, Conflict, KubeError, NotFound

log = logging.getLogger(__name__)

Obj = dict[str, Any]

#: The Lease's name when ``--leader-elect-id`` is not given.
DEFAULT_LEASE_NAME = "kubestep-operator"
DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_DEADLINE = 10.0
DEFAULT_RETRY_PERIOD = 2.0
#: A candidate waits its retry period times up to this much more, so that candidates do not poll in step.
CANDIDATE_JITTER = 0.2
#: The namespace file of the in-cluster ServiceAccount.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# Settings ----------------------------------------------------------------------------------------------


class ElectionSettingError(ValueError):
    """A leader-election setting that cannot work; ``option`` names the command-line option."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class ElectionConfig:
    """Where the Lease is, who this process is, and the three durations (seconds)."""

    namespace: str
    name: str
    identity: str
    lease_duration: float
    renew_deadline: float
    retry_period: float

    @property
    def lease_seconds(self) -> int:
        """The lease duration as the Lease records it (whole seconds)."""
        return math.ceil(self.lease_duration)


def election_config(
    *,
    lease_duration: float = DEFAULT_LEASE_DURATION,
    renew_deadline: float = DEFAULT_RENEW_DEADLINE,
    retry_period: float = DEFAULT_RETRY_PERIOD,
    namespace: str | None = None,
    name: str = DEFAULT_LEASE_NAME,
    identity: str | None = None,
) -> ElectionConfig:
    """Check the settings (as client-go does) and fill in the namespace and identity of this process.

    Raises :class:`ElectionSettingError` naming the option, the value and the fix.
    """
    if lease_duration < 1 or lease_duration != int(lease_duration):
        raise ElectionSettingError(
            "--leader-elect-lease-duration",
            f"the lease duration must be a whole number of seconds, at least 1s (a Lease records whole "
            f"seconds); got {lease_duration:g}s. Use for example 15s.",
        )
    if not 0 < renew_deadline < lease_duration:
        raise ElectionSettingError(
            "--leader-elect-renew-deadline",
            f"the renew deadline ({renew_deadline:g}s) must be above 0 and shorter than the lease duration "
            f"({lease_duration:g}s): a leader must stop before another may take its lease. "
            "Use for example 10s with a 15s lease.",
        )
    if not 0 < retry_period * (1 + CANDIDATE_JITTER) < renew_deadline:
        raise ElectionSettingError(
            "--leader-elect-retry-period",
            f"the retry period ({retry_period:g}s) must be above 0 and, with {CANDIDATE_JITTER:.0%} jitter, "
            f"shorter than the renew deadline ({renew_deadline:g}s), or a leader could not try to renew "
            "even once in time. Use for example 2s with a 10s deadline.",
        )
    if not name:
        raise ElectionSettingError("--leader-elect-id", "the Lease's name must not be empty")
    return ElectionConfig(
        namespace=namespace or default_namespace(),
        name=name,
        identity=identity or default_identity(),
        lease_duration=lease_duration,
        renew_deadline=renew_deadline,
        retry_period=retry_period,
    )


def default_identity() -> str:
    """``$POD_NAME`` (set from the downward API), else this host's name and the process id."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


def default_namespace() -> str:
    """``$POD_NAMESPACE``, else the in-cluster ServiceAccount's namespace, else ``default``."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


# The pure decisions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease's ``spec`` says about its leader."""

    holder: str
    """``holderIdentity``; empty when nobody holds it (released)."""
    duration_seconds: int
    """``leaseDurationSeconds``: how long others wait, after they saw the record change, before taking it."""
    acquire_time: datetime | None
    """When the current holder took it."""
    renew_time: datetime | None
    """When the current holder last renewed it (by its own clock: for people, never for expiry)."""
    transitions: int
    """``leaseTransitions``: how many times the holder changed."""

    @classmethod
    def from_spec(cls, spec: Obj) -> LeaseRecord:
        """Read a Lease's ``spec`` (a missing field reads as empty or zero)."""
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=_time(spec.get("acquireTime")),
            renew_time=_time(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> Obj:
        """The Lease's ``spec`` (times as the ``MicroTime`` the API expects)."""
        spec: Obj = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_seconds,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time is not None:
            spec["acquireTime"] = _micro_time(self.acquire_time)
        if self.renew_time is not None:
            spec["renewTime"] = _micro_time(self.renew_time)
        return spec


@dataclass(frozen=True)
class Verdict:
    """May this process take or renew the Lease now, and with what record."""

    write: LeaseRecord | None
    """The record to write (create when there is no Lease, else update at the version read); None: wait."""
    why: str
    """In words, for the log."""


def decide(
    observed: LeaseRecord | None,
    identity: str,
    seen_at: float,
    now: float,
    wall: datetime,
    lease_seconds: int,
) -> Verdict:
    """Whether ``identity`` may take or renew the Lease now.

    ``observed`` is the record just read (None: there is no Lease), ``seen_at`` the time on this
    process's monotonic clock when it first saw the record as it is now (:func:`seen_since`), ``now``
    that clock's current reading, ``wall`` the current UTC time for the times written into the record,
    and ``lease_seconds`` the duration this process writes.

    Another holder's lease lasts the duration *its* record states, counted from ``seen_at``; a duration
    of zero or less counts as expired (a record written with none says nothing about its holder).
    """
    if observed is None:
        return Verdict(LeaseRecord(identity, lease_seconds, wall, wall, 0), "there is no Lease: create it")
    if observed.holder == identity:
        renewed = replace(
            observed,
            duration_seconds=lease_seconds,
            acquire_time=observed.acquire_time or wall,
            renew_time=wall,
        )
        return Verdict(renewed, "this process holds it: renew")
    expires_in = seen_at + observed.duration_seconds - now
    if observed.holder and expires_in > 0:
        return Verdict(None, f"held by {observed.holder}; expires in {expires_in:.1f}s unless renewed")
    taken = LeaseRecord(identity, lease_seconds, wall, wall, observed.transitions + 1)
    why = (
        f"{observed.holder} did not renew it for {now - seen_at:.1f}s: take it"
        if observed.holder
        else "nobody holds it: take it"
    )
    return Verdict(taken, why)


def release(observed: LeaseRecord, identity: str, wall: datetime) -> LeaseRecord | None:
    """The record that hands the Lease back (nobody holds it, so a candidate takes it at once), if ours."""
    if observed.holder != identity:
        return None
    return replace(observed, holder="", duration_seconds=1, acquire_time=wall, renew_time=wall)


def seen_since(
    previous: LeaseRecord | None, previous_seen_at: float, current: LeaseRecord, now: float
) -> float:
    """When this process first saw ``current``: ``now`` if it differs from the record seen before."""
    return previous_seen_at if current == previous else now


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _micro_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# The loop ------------------------------------------------------------------------------------------------


class LeaseApi(Protocol):
    """The Lease calls of the API module (:class:`~kubestep.controller.kube.Kube`)."""

    async def get_lease(self, namespace: str, name: str, timeout: float) -> Obj:
        """Read a Lease; raise ``NotFound`` if there is none."""

    async def create_lease(self, namespace: str, body: Obj, timeout: float) -> Obj:
        """Create a Lease; raise ``AlreadyExists`` if another process was faster."""

    async def replace_lease(self, namespace: str, name: str, body: Obj, timeout: float) -> Obj:
        """Replace a Lease at the ``resourceVersion`` in ``body``; raise ``Conflict`` if it changed."""


class LeaderElector:
    """Takes the Lease, keeps it renewed, and calls back when leadership starts and stops."""

    def __init__(
        self,
        config: ElectionConfig,
        api: LeaseApi,
        on_started: Callable[[], Awaitable[None]],
        on_stopped: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self._api = api
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._clock = clock
        self._wall = wall
        self._seen: LeaseRecord | None = None
        self._seen_at = 0.0
        # The monotonic time until which this process may write; None while it does not lead.
        self._valid_until: float | None = None
        self._waiting_on = ""
        self._why = ""
        self._last_error = ""

    # What the rest of the operator asks ----------------------------------------------------------------

    def may_write(self) -> bool:
        """Whether this process leads *right now*: safe to call from any thread, reads only a clock."""
        until = self._valid_until
        return until is not None and self._clock() < until

    @property
    def leading(self) -> bool:
        """Whether this process holds the Lease (as far as its last renewal says)."""
        return self.may_write()

    def state(self) -> dict[str, Any]:
        """For the health endpoint: this process's identity, whether it leads, the holder it last saw."""
        return {
            "identity": self.config.identity,
            "lease": f"{self.config.namespace}/{self.config.name}",
            "leading": self.leading,
            "holder": self._seen.holder if self._seen is not None else None,
        }

    # The loop ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign, lead until the Lease cannot be renewed, campaign again; forever (until cancelled)."""
        while True:
            await self._acquire()
            try:
                await self._on_started()
                await self._hold()
            finally:
                self._valid_until = None
                await self._on_stopped()

    async def _acquire(self) -> None:
        while not await self._try():
            await asyncio.sleep(self.config.retry_period * (1 + random.uniform(0, CANDIDATE_JITTER)))
        log.info(
            "leading: Lease %s/%s taken as %s (%s); holder changes so far: %d",
            self.config.namespace,
            self.config.name,
            self.config.identity,
            self._why,
            self._seen.transitions if self._seen is not None else 0,
        )

    async def _hold(self) -> None:
        while True:
            until = self._valid_until
            if until is None:
                return
            # Wake at the deadline at the latest, so that the workers stop as soon as writing has.
            await asyncio.sleep(min(self.config.retry_period, max(0.0, until - self._clock())))
            remaining = until - self._clock()
            renewed = False
            if remaining > 0:
                # Not asyncio.wait_for: on Python 3.11 it drops a cancel that arrives as the renewal
                # completes, and the elector (and the operator's shutdown) would never stop.
                try:
                    async with asyncio.timeout(remaining):
                        renewed = await self._try()
                except TimeoutError:
                    self._waiting_on = "the API server did not answer in time"
            else:
                # The event loop did not run in time: the process was stopped, suspended or starved.
                self._waiting_on = "this process did not get to try in time"
            if not renewed and not self.may_write():
                log.warning(
                    "stopped leading: Lease %s/%s not renewed within %gs (%s); standing by",
                    self.config.namespace,
                    self.config.name,
                    self.config.renew_deadline,
                    self._waiting_on,
                )
                return

    async def _try(self) -> bool:
        """One attempt to take or renew the Lease; True if this process now holds it."""
        started = self._clock()
        cfg = self.config
        try:
            verdict = await self._take_or_renew()
        except (AlreadyExists, Conflict):
            self._waiting_on = "another process wrote the Lease first"
            return False
        except KubeError as exc:
            self._waiting_on = f"the Lease could not be read or written: {exc}"
            if self._waiting_on != self._last_error:  # say it once, not every retry period
                log.warning("leader election: %s", self._waiting_on)
                self._last_error = self._waiting_on
            return False
        except Exception:  # a bug of ours, or a Lease we cannot read: never end the campaign over it
            log.exception("leader election: trying to take or renew the Lease failed unexpectedly")
            self._waiting_on = "an unexpected error (logged)"
            return False
        self._last_error = ""
        if verdict.write is None:
            self._waiting_on = verdict.why
            return False
        self._why = verdict.why
        self._seen, self._seen_at = verdict.write, self._clock()
        # Counted from before the read: the API server may have stored the write any time after it.
        self._valid_until = started + cfg.renew_deadline
        return True

    async def _take_or_renew(self) -> Verdict:
        """Read the Lease, decide, and write it if the verdict says so."""
        cfg = self.config
        try:
            lease: Obj | None = await self._api.get_lease(cfg.namespace, cfg.name, cfg.renew_deadline)
        except NotFound:
            lease = None
        observed = LeaseRecord.from_spec(lease.get("spec") or {}) if lease is not None else None
        if observed is not None:
            self._seen_at = seen_since(self._seen, self._seen_at, observed, self._clock())
            self._note_holder(observed)
            self._seen = observed
        verdict = decide(
            observed, cfg.identity, self._seen_at, self._clock(), self._wall(), cfg.lease_seconds
        )
        if verdict.write is None:
            return verdict
        body = _lease_body(cfg, verdict.write, lease)
        if lease is None:
            await self._api.create_lease(cfg.namespace, body, cfg.renew_deadline)
        else:
            await self._api.replace_lease(cfg.namespace, cfg.name, body, cfg.renew_deadline)
        return verdict

    def _note_holder(self, observed: LeaseRecord) -> None:
        previous = self._seen.holder if self._seen is not None else None
        if observed.holder != previous and observed.holder != self.config.identity:
            log.info(
                "standing by: Lease %s/%s is held by %s",
                self.config.namespace,
                self.config.name,
                observed.holder or "nobody",
            )

    async def release(self) -> None:
        """Stop leading and hand the Lease back, so that a candidate takes it at once (graceful shutdown).

        Call it once nothing of this process writes any more.
        """
        self._valid_until = None
        cfg = self.config
        try:
            lease = await self._api.get_lease(cfg.namespace, cfg.name, cfg.renew_deadline)
            released = release(LeaseRecord.from_spec(lease.get("spec") or {}), cfg.identity, self._wall())
            if released is None:
                return
            await self._api.replace_lease(
                cfg.namespace, cfg.name, _lease_body(cfg, released, lease), cfg.renew_deadline
            )
        except KubeError as exc:
            log.warning(
                "could not release Lease %s/%s (%s); it expires in %gs",
                cfg.namespace,
                cfg.name,
                exc,
                cfg.lease_duration,
            )
            return
        log.info("released Lease %s/%s", cfg.namespace, cfg.name)


def _lease_body(cfg: ElectionConfig, record: LeaseRecord, current: Obj | None) -> Obj:
    metadata: Obj = {"name": cfg.name, "namespace": cfg.namespace}
    if current is not None:
        metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": record.to_spec(),
    }
