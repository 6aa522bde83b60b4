"""The ``kubestep`` command line."""

from __future__ import annotations

import typer

from kubestep.cli import cluster_cmds
from kubestep.cli.operator_cmd import operator
from kubestep.cli.run_cmd import run

app = typer.Typer(
    name="kubestep",
    help="Durable, step-based workflows on Kubernetes — and on this machine.",
    no_args_is_help=True,
    add_completion=True,
)
app.command("run")(run)
app.command("operator")(operator)
cluster_cmds.register(app)


@app.callback()
def _root() -> None:
    """Durable, step-based workflows on Kubernetes — and on this machine."""


if __name__ == "__main__":
    app()
