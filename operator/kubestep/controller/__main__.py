"""``python -m kubestep.controller``: the operator, for all namespaces."""

from kubestep.controller.main import run_operator

run_operator()
