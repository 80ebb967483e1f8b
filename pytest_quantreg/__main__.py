"""``python -m pytest_quantreg``: the ``quantreg`` command."""

from pytest_quantreg.cli import main

raise SystemExit(main())
