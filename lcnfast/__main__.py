"""``python -m lcnfast ...``: the ``lcnfast`` command (lcnfast.cli)."""

from .cli import main

raise SystemExit(main())
