"""The step facade workflow code calls, and the replay that drives it.

A run advances by replaying the function from the top: steps already finished return their recorded
output at once; the first step without a result is executed (a ``run`` step) or reported (a sleep, a wait,
an invoke, a send, a parallel group), and the function is stopped with an ``Interrupt``.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from kubestep.api.durations import parse_duration
from kubestep.api.names import sent_event_name
from kubestep.api.policy import CodeOptions
from kubestep.api.report import MemoEntry, Report, ReportError, ReportKind, RunnerState, StepRef
from kubestep.api.steps import StepType
from kubestep.sdk.errors import (
    Interrupt,
    NondeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    WorkflowDefinitionError,
)
from kubestep.sdk.options import StepOptions
from kubestep.sdk.workflow import Context, EventPayload, WorkflowFunction

_TRACEBACK_LINES = 20
#: Sends one report carries before the chain ends (each nests the next: reports stay shallow).
MAX_CHAINED_SENDS = 20
_MESSAGE_CHARS = 2000


class _Reported(Interrupt):
    """Replay has its report; the function must stop."""

    def __init__(self, report: Report) -> None:
        super().__init__(report.kind.value)
        self.report = report


class _NewStep(Interrupt):
    """Inside a parallel group: this branch reached a step that has no result yet."""

    def __init__(self, ref: StepRef, pending: bool) -> None:
        super().__init__(ref.id)
        self.ref = ref
        self.pending = pending


def to_json(value: Any, what: str, limit: int) -> Any:
    """Check that ``value`` is JSON within ``limit`` bytes; return its JSON round trip.

    Raises ``NonRetriableError`` naming ``what`` and the offending type or size.
    """
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise NonRetriableError(
            f"{what} returned a value that is not JSON ({_json_problem(value, exc)}); return dicts, "
            "lists, strings, numbers, booleans or None — convert other objects before returning them"
        ) from None
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("utf-8", "backslashreplace").decode()
        raise NonRetriableError(
            f"{what} returned a string that is not valid Unicode (it holds {bad}, a lone surrogate such as "
            "os.fsdecode gives for a file name that is not UTF-8); JSON cannot carry it — decode such bytes "
            "with errors='replace', or return them as base64"
        ) from None
    size = len(text.encode())
    if size > limit:
        raise NonRetriableError(
            f"{what} returned {size} bytes of JSON; the limit is {limit} bytes "
            "(spec.limits.stepOutputBytes). "
            "Store large data elsewhere (object storage, a database) and return a reference to it"
        )
    return json.loads(text)


def _json_problem(value: Any, exc: Exception) -> str:
    bad = _first_non_json(value)
    if bad is not None:
        return f"type {type(bad).__module__}.{type(bad).__qualname__}".replace("builtins.", "")
    return str(exc)


def _first_non_json(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return value if value != value or value in (float("inf"), float("-inf")) else None
    if isinstance(value, list | tuple):
        return next((b for b in map(_first_non_json, value) if b is not None), None)
    if isinstance(value, dict):
        if any(not isinstance(k, str | int | float | bool) and k is not None for k in value):
            return next(k for k in value if not isinstance(k, str | int | float | bool))
        return next((b for b in map(_first_non_json, value.values()) if b is not None), None)
    return value


def encodable(text: str) -> str:
    """``text`` with characters that UTF-8 cannot carry (lone surrogates) written as ``\\udcxx`` escapes.

    Messages of user exceptions may hold them (``os.fsdecode`` of a non-UTF-8 file name); the report must
    still be written, so that the attempt is recorded on its step.
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def classify(exc: BaseException, now: datetime) -> ReportError:
    """Turn an exception raised by a step into the report's error, with its retry class."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    tail = "\n".join(tb.rstrip().splitlines()[-_TRACEBACK_LINES:])
    message = str(exc) if not isinstance(exc, SystemExit) else f"sys.exit({exc.code!r}) was called"
    error = ReportError(
        type=type(exc).__name__, message=encodable(message[:_MESSAGE_CHARS]), traceback=encodable(tail)
    )
    if isinstance(exc, NonRetriableError | WorkflowDefinitionError | NondeterminismError):
        error.retriable = False
    elif isinstance(exc, RetryAfterError):
        error.retry_after_seconds = exc.delay_seconds(now)
    return error


class Step:
    """The steps of a workflow function: ``step.run``, ``step.sleep``, ``step.wait_for_event`` and friends.

    Each step has a name, unique within the run; a name reached again (in a loop) gets a counter
    (``name:1``, ``name:2``). Outputs are JSON and are recorded, so finished steps never run again.
    """

    def __init__(self, replay: Replay) -> None:
        self._replay = replay

    def run(
        self,
        id: str,
        fn: Callable[..., Any],
        *args: Any,
        opts: StepOptions | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as a durable step named ``id`` and return its (JSON) output.

        A failure is retried on its own with the workflow's backoff; raise ``NonRetriableError`` to stop
        retrying, or ``RetryAfterError`` to choose the delay. When the step fails for good, ``StepError``
        is raised here. ``opts`` (``StepOptions(retries=..., timeout=...)``) sets this step's own policy;
        the Workflow's ``spec.steps`` wins over it. It is the one keyword ``fn`` cannot receive.
        """
        options: CodeOptions | None = None
        if opts is not None:
            if not isinstance(opts, StepOptions):
                self._replay.fail_run(
                    WorkflowDefinitionError(
                        f"step {id!r}: opts must be a kubestep.StepOptions, got {type(opts).__name__}; "
                        "write opts=StepOptions(retries=5)"
                    )
                )
            try:
                options = opts.resolved(id)
            except ValueError as exc:
                self._replay.fail_run(WorkflowDefinitionError(str(exc)))
        return self._replay.reach(
            id, StepType.RUN, lambda ref: self._replay.execute(ref, fn, args, kwargs), options
        )

    def sleep(self, id: str, duration: str | float | timedelta) -> None:
        """Pause the run for ``duration`` (``"30s"``, ``"2h"``, ``"1d"``, seconds, or a ``timedelta``).

        No pod stays alive while the run sleeps.
        """
        seconds = self._replay.seconds(id, duration, "sleep duration")
        self._replay.reach(
            id,
            StepType.SLEEP,
            lambda ref: self._replay.report(
                Report(kind=ReportKind.SLEEP, step=ref, until=self._replay.now + timedelta(seconds=seconds))
            ),
        )

    def sleep_until(self, id: str, when: datetime | str) -> None:
        """Pause the run until ``when`` (a timezone-aware ``datetime`` or an RFC 3339 string)."""
        try:
            until = datetime.fromisoformat(when) if isinstance(when, str) else when
        except ValueError:
            self._replay.fail_run(
                WorkflowDefinitionError(f"step {id!r}: sleep_until needs an RFC 3339 time, got {when!r}")
            )
        if until.tzinfo is None:
            self._replay.fail_run(
                WorkflowDefinitionError(
                    f"step {id!r}: sleep_until needs a timezone-aware time, got {until.isoformat()}; "
                    "add a timezone, e.g. datetime(..., tzinfo=UTC)"
                )
            )
        self._replay.reach(
            id,
            StepType.SLEEP,
            lambda ref: self._replay.report(Report(kind=ReportKind.SLEEP, step=ref, until=until)),
        )

    def wait_for_event(
        self, id: str, event: str, *, timeout: str | float | timedelta, if_: str | None = None
    ) -> EventPayload | None:
        """Wait until an event named ``event`` arrives, and return it; return ``None`` after ``timeout``.

        ``if_`` is a CEL condition over ``event`` (this run's trigger) and ``async`` (the arriving
        event), e.g. ``"async.data.upload_id == event.data.upload_id"``. Only events published after the
        wait began can match.
        """
        seconds = self._replay.seconds(id, timeout, "wait_for_event timeout")
        raw = self._replay.reach(
            id,
            StepType.WAIT_FOR_EVENT,
            lambda ref: self._replay.report(
                Report(
                    kind=ReportKind.WAIT_FOR_EVENT, step=ref, event=event, if_=if_, timeout_seconds=seconds
                )
            ),
        )
        return None if raw is None else EventPayload.from_dict(raw)

    def send_event(
        self, id: str, name: str, data: dict[str, Any] | None = None, *, user: dict[str, Any] | None = None
    ) -> list[str]:
        """Publish an event as a step (sent once, even when the run is replayed); return the event ids."""
        try:
            payload = to_json(
                {"name": name, "data": data or {}, "user": user or {}},
                f"step {id!r} (send_event)",
                self._replay.state.max_output_bytes,
            )
        except NonRetriableError as exc:
            self._replay.fail_run(WorkflowDefinitionError(str(exc)))
        result = self._replay.reach(
            id,
            StepType.SEND_EVENT,
            lambda ref: self._replay.send(Report(kind=ReportKind.SEND_EVENT, step=ref, events=[payload])),
        )
        return list(result or [])

    def invoke(
        self,
        id: str,
        workflow: str | WorkflowFunction,
        data: dict[str, Any] | None = None,
        *,
        timeout: str | float | timedelta | None = None,
    ) -> Any:
        """Start another workflow (by Workflow name) as a child run, wait for it and return its output.

        If the child fails, ``StepError`` is raised here.
        """
        name = workflow.id if isinstance(workflow, WorkflowFunction) else workflow
        seconds = None if timeout is None else self._replay.seconds(id, timeout, "invoke timeout")
        try:
            data = to_json(data or {}, f"step {id!r} (invoke data)", self._replay.state.max_output_bytes)
        except NonRetriableError as exc:
            self._replay.fail_run(WorkflowDefinitionError(str(exc)))
        return self._replay.reach(
            id,
            StepType.INVOKE,
            lambda ref: self._replay.report(
                Report(
                    kind=ReportKind.INVOKE, step=ref, workflow=name, data=data or {}, timeout_seconds=seconds
                )
            ),
        )

    def parallel(self, *branches: Callable[[], Any]) -> tuple[Any, ...]:
        """Run several ``step.run`` calls at the same time, each retried on its own; return their outputs.

        Pass callables: ``step.parallel(lambda: step.run("a", fa), lambda: step.run("b", fb))``.
        """
        return self._replay.parallel(branches)


class Replay:
    """One replay of a workflow function against a run's recorded steps."""

    def __init__(self, state: RunnerState, now: Callable[[], datetime] | None = None) -> None:
        self.state = state
        self._clock = now or (lambda: datetime.now(UTC))
        self._position = 0
        self._names: Counter[str] = Counter()
        self._ids: set[str] = set()
        self._in_parallel = False
        self._branch: list[str] | None = None  # steps reached by the current parallel branch
        self._executing: str | None = None
        self._succeeded: Report | None = None  # the step this replay executed, once it returned
        self._boundaries: list[Report] = []  # sends replay went past after it
        self.on_start: Callable[[Report], None] = lambda report: None
        """Called with a ``started`` report just before a step executes (the runner persists it)."""
        self.on_succeeded: Callable[[Report], None] = lambda report: None
        """Called with the ``step_succeeded`` report as soon as the step returns, before replay goes on to
        the next boundary (the runner persists it, so an output is never lost to what follows)."""
        self._executed = 0  # steps this replay executed (more than one only in chained mode)
        self._began = self._clock()
        self.stubs: dict[str, Any] = {}
        """Test doubles by step id or name: a value to return, an exception to raise, or a callable."""

    @property
    def now(self) -> datetime:
        """The current time."""
        return self._clock()

    # The replay protocol -------------------------------------------------------------------------

    def reach(
        self,
        name: str,
        kind: StepType,
        on_new: Callable[[StepRef], Any],
        options: CodeOptions | None = None,
    ) -> Any:
        """The function reached step ``name``: return its recorded result, or act on the new step."""
        if not isinstance(name, str) or not name:
            self.fail_run(WorkflowDefinitionError(f"step names must be non-empty strings, got {name!r}"))
        if self._executing is not None:
            self.fail_run(
                WorkflowDefinitionError(
                    f"step {name!r} was called inside step {self._executing!r}; steps cannot be nested — "
                    "call it from the workflow function instead"
                )
            )
        ref = StepRef(id=self._unique_id(name), name=name, type=kind, options=options)
        if self._branch is not None:
            if self._branch:
                self.fail_run(
                    WorkflowDefinitionError(
                        f"a branch of step.parallel reached step {self._branch[0]!r} and then {ref.id!r}; "
                        "each branch may call one step.run — run the chain as one step, or after the group"
                    )
                )
            self._branch.append(ref.id)
        memo = self._recorded(ref)
        if memo is not None and memo.done:
            if memo.error is not None:
                raise StepError(ref.id, memo.error.get("type", "Error"), memo.error.get("message", ""))
            return memo.output
        if (self._succeeded is not None or self._boundaries) and not self._in_parallel:
            if kind is StepType.RUN and self._may_chain():
                # Chained mode: the step just finished is recorded (``on_succeeded``); execute this one here.
                self._succeeded = None
                self.state = self.state.model_copy(update={"target": None})
                return on_new(ref)
            if kind is StepType.RUN:
                # The next step's body belongs to an execution of its own: name it, do not run it.
                self.report(Report(kind=ReportKind.NEXT_STEP, step=ref))
            return on_new(ref)
        executable = kind is StepType.RUN and (self.state.target in (None, ref.id))
        if self._in_parallel:
            if kind is not StepType.RUN:
                self.fail_run(
                    WorkflowDefinitionError(
                        f"step {ref.id!r}: only step.run can be used inside step.parallel, not {kind.value}"
                    )
                )
            if not (executable and memo is not None and self.state.target == ref.id):
                raise _NewStep(ref, pending=memo is not None)
        elif memo is not None and not executable:
            self._nondeterministic(
                f"replay reached step {ref.id!r}, which is still in progress, while executing "
                f"{self.state.target!r}; the function must reach its steps in the same order every time"
            )
        elif self.state.target is not None and memo is None:
            self._nondeterministic(
                f"replay reached new step {ref.id!r} before step {self.state.target!r} it was asked to "
                "execute; the function must reach its steps in the same order every time"
            )
        return on_new(ref)

    def _may_chain(self) -> bool:
        """Whether this execution may go on to execute the next ``step.run`` (chained mode).

        Not past a send (its events are published from the report), nor after a retry (the steps after a
        retried one start a chain of their own, with their own attempt numbers)."""
        state = self.state
        if self._boundaries or state.attempt != 1 or self._executed >= state.chain_steps:
            return False
        return state.chain_seconds is None or (self.now - self._began).total_seconds() < state.chain_seconds

    def _unique_id(self, name: str) -> str:
        """``name``, or ``name:N`` for its N-th repeat, skipping ids already taken (a user may have named a
        step ``fetch:1`` too). Deterministic, so every replay hands out the same ids."""
        while True:
            count = self._names[name]
            self._names[name] += 1
            candidate = name if count == 0 else f"{name}:{count}"
            if candidate not in self._ids:
                self._ids.add(candidate)
                return candidate

    def _recorded(self, ref: StepRef) -> MemoEntry | None:
        """The memo of ``ref`` if the run has reached it, checking that the order is the recorded one."""
        steps = self.state.steps
        if self._position >= len(steps):
            self._position += 1
            return None
        expected = steps[self._position]
        if expected.id != ref.id or expected.type is not ref.type:
            self._nondeterministic(
                f"replay reached {ref.type.value} step {ref.id!r} where the run recorded "
                f"{expected.type.value} step {expected.id!r} (step #{self._position + 1}); the function must "
                "reach its steps in the same order every time — keep time, randomness and I/O inside steps"
            )
        self._position += 1
        return expected

    def report(self, report: Report) -> NoReturn:
        """Stop the function with ``report`` (as the ``next`` of the step this replay executed, if any)."""
        raise _Reported(self._after_step(report))

    def send(self, report: Report) -> list[str]:
        """Publish the events of a send step: carried on the report while replay goes on, since the ids
        the events get are known here already — up to `MAX_CHAINED_SENDS` in one report."""
        if len(self._boundaries) >= MAX_CHAINED_SENDS:
            self.report(report)  # the next execution goes on from here
        assert report.step is not None
        ids = [sent_event_name(self.state.run, report.step.id, i) for i in range(len(report.events))]
        self._boundaries.append(report)
        return ids

    def _after_step(self, report: Report) -> Report:
        """``report`` as the end of what this replay reached: the executed step's output, then the sends
        replay went past, then ``report``."""
        chain = report
        for send in reversed(self._boundaries):
            chain = send.model_copy(update={"next": chain})
        if self._succeeded is None:
            return chain
        return self._succeeded.model_copy(update={"next": chain})

    def _nondeterministic(self, message: str) -> NoReturn:
        """Fail the run; as an interrupt, so that ``except Exception`` in user code cannot hide it."""
        self.fail_run(NondeterminismError(message))

    def fail_run(self, exc: Exception) -> NoReturn:
        """Fail the run for a misuse of the SDK, in a way ``except Exception`` cannot swallow."""
        self.report(_failed(exc, self.now))

    def seconds(self, step_id: str, value: str | float | timedelta, what: str) -> float:
        """Parse a duration argument; a bad one fails the run with a message naming the step."""
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail_run(WorkflowDefinitionError(f"step {step_id!r}: {what}: {exc}"))

    def execute(
        self, ref: StepRef, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Execute a ``run`` step in this process and stop the function with its result."""
        self.on_start(Report(kind=ReportKind.STARTED, step=ref))
        self._executing = ref.id
        self._executed += 1
        try:
            output = to_json(
                self._call(ref, fn, args, kwargs), f"step {ref.id!r}", self.state.max_output_bytes
            )
        except (Exception, SystemExit) as exc:
            raise _Reported(
                Report(kind=ReportKind.STEP_FAILED, step=ref, error=classify(exc, self.now))
            ) from exc
        succeeded = Report(kind=ReportKind.STEP_SUCCEEDED, step=ref, output=output)
        if self._in_parallel:
            # The group's other branches are other executions' to run: the code after it cannot go on.
            raise _Reported(succeeded)
        self.on_succeeded(succeeded)
        self._executing = None
        self._succeeded = succeeded
        return output

    def _call(
        self, ref: StepRef, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        key = ref.id if ref.id in self.stubs else ref.name
        if key not in self.stubs:
            return fn(*args, **kwargs)
        stub = self.stubs[key]
        if isinstance(stub, BaseException):
            raise stub
        return stub(*args, **kwargs) if callable(stub) else stub

    def parallel(self, branches: tuple[Callable[[], Any], ...]) -> tuple[Any, ...]:
        """Replay each branch; report the new ones together as a plan."""
        if self._in_parallel:
            self.fail_run(WorkflowDefinitionError("step.parallel cannot be nested"))
        results: list[Any] = []
        planned: list[StepRef] = []
        failures: list[StepError] = []
        pending = False
        self._in_parallel = True
        try:
            for branch in branches:
                self._branch = []
                try:
                    results.append(branch())
                except _NewStep as new:
                    pending = pending or new.pending
                    if not new.pending:
                        planned.append(new.ref)
                    results.append(None)
                except StepError as failed:
                    # Replay every branch first, so positions stay aligned and the others still run.
                    failures.append(failed)
                    results.append(None)
        finally:
            self._in_parallel = False
            self._branch = None
        if planned:
            self.report(Report(kind=ReportKind.PLANNED, planned=planned))
        if failures and not pending:
            raise failures[0]
        if pending:
            # Some branches are still being executed by other executions; nothing new to do here.
            self._nondeterministic(
                "a parallel group still has steps in progress but this execution was given none of them"
            )
        return tuple(results)

    # Running the whole function -----------------------------------------------------------------------

    def run(self, workflow: WorkflowFunction) -> Report:
        """Replay ``workflow`` once and return the report."""
        ctx = Context(
            event=EventPayload.from_dict(self.state.event),
            run_id=self.state.run,
            attempt=self.state.attempt,
            events=tuple(EventPayload.from_dict(e) for e in self.state.events or [self.state.event]),
        )
        try:
            output = workflow(ctx, Step(self))
        except _Reported as done:
            return done.report
        except _NewStep as stray:  # a branch callable was called outside step.parallel
            failed = _failed(
                WorkflowDefinitionError(f"step {stray.ref.id!r} escaped step.parallel"), self.now
            )
            return self._after_step(failed)
        except StepError as exc:
            return self._after_step(
                Report(
                    kind=ReportKind.FAILED,
                    error=ReportError(
                        type=exc.error_type, message=encodable(exc.error_message), retriable=False
                    ),
                    step=_ref_of(self.state, exc.step_id),
                )
            )
        except SystemExit as exc:
            # Outside any step an exit is the function ending in failure, like any exception there.
            error = WorkflowDefinitionError(
                f"the workflow function called sys.exit({exc.code!r}) outside any step; raise an exception "
                "(or return) instead — the run fails here"
            )
            return self._after_step(_failed(error, self.now))
        except Exception as exc:
            return self._after_step(_failed(exc, self.now))
        try:
            value = to_json(output, "the workflow function", self.state.max_output_bytes)
        except NonRetriableError as exc:
            return self._after_step(_failed(exc, self.now))
        return self._after_step(Report(kind=ReportKind.COMPLETED, output=value))


def _failed(exc: Exception, now: datetime) -> Report:
    error = classify(exc, now)
    error.retriable = False
    return Report(kind=ReportKind.FAILED, error=error)


def _ref_of(state: RunnerState, step_id: str) -> StepRef | None:
    memo = next((m for m in state.steps if m.id == step_id), None)
    return None if memo is None else StepRef(id=memo.id, name=memo.name, type=memo.type)
