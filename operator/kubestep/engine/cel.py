"""CEL conditions on events, through a real CEL implementation (compiled programs cached)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cel


class CelError(ValueError):
    """An expression that does not compile or cannot be evaluated on the given input."""


@lru_cache(maxsize=1024)
def _compile(expression: str) -> Any:
    try:
        return cel.compile(expression)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CelError(f"CEL expression {expression!r} does not compile: {exc}") from None


def check(expression: str) -> str | None:
    """None when ``expression`` compiles, otherwise the compiler's message."""
    try:
        _compile(expression)
    except CelError as exc:
        return str(exc)
    return None


def holds(expression: str, variables: dict[str, Any]) -> bool:
    """Evaluate a condition; it holds only if it yields ``true``. Raises ``CelError`` on failure."""
    program = _compile(expression)
    try:
        result = program.execute(variables)
    except Exception as exc:  # any evaluation failure (missing key, division by zero) is the expression's
        raise CelError(f"CEL expression {expression!r} failed: {exc}") from None
    if not isinstance(result, bool):
        raise CelError(f"CEL expression {expression!r} yielded {result!r}, not a boolean")
    return result


def evaluate(expression: str, variables: dict[str, Any]) -> Any:
    """Evaluate an expression to its value (a string, a number, a list, ...). Raises ``CelError``."""
    program = _compile(expression)
    try:
        return program.execute(variables)
    except Exception as exc:  # as in `holds`: any evaluation failure is the expression's
        raise CelError(f"CEL expression {expression!r} failed: {exc}") from None
