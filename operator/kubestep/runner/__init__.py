"""The in-pod entry point, ``python -m kubestep.runner``: load the function, replay it, report once.

Exit codes:

- 0: a report was written (a step output, a plan, a sleep or wait, an invoke, a send, or the function's
  output);
- 1: a report was written and it says a step or the function failed;
- 2: the runner's input was unusable (missing or corrupt state file); nothing was reported;
- 3: the report could not be written to the termination message path.
"""
