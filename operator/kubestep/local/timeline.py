"""A readable, live timeline of local runs."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console
from rich.markup import escape

from kubestep.engine.actions import Note

_STYLES = {
    "RunStarted": "bold cyan",
    "StepSucceeded": "green",
    "RunSucceeded": "bold green",
    "AttemptFailed": "yellow",
    "RetryScheduled": "yellow",
    "StepFailed": "bold red",
    "RunFailed": "bold red",
    "RunCancelled": "bold red",
    "RunnerFailed": "red",
}


class Timeline:
    """Prints what happens, one line per transition, with the step output indented below."""

    def __init__(self, console: Console, show_logs: bool = True) -> None:
        self.console = console
        self.show_logs = show_logs

    def note(self, when: datetime, run: str, note: Note) -> None:
        """One transition."""
        style = _STYLES.get(note.reason, "red" if note.warning else "")
        stamp = when.astimezone().strftime("%H:%M:%S")
        text = escape(note.message)
        body = f"[{style}]{text}[/{style}]" if style else text
        self.console.print(
            f"[dim]{stamp}[/dim] [bold]{escape(run)}[/bold] {body}", highlight=False, soft_wrap=True
        )

    def output(self, execution: str, log: str) -> None:
        """What an execution printed."""
        lines = [line for line in log.splitlines() if not line.startswith("::kubestep-report::")]
        if not self.show_logs or not lines:
            return
        for line in lines:
            self.console.print(f"    [dim]│ {escape(line)}[/dim]", highlight=False, soft_wrap=True)
