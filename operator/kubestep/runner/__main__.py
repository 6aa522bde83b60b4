"""``python -m kubestep.runner``: see ``kubestep.runner`` for the protocol and exit codes."""

from kubestep.runner.main import main

raise SystemExit(main())
