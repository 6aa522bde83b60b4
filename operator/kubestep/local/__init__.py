"""``kubestep run``: the same engine on one machine, each step attempt a local process."""
