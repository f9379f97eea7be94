"""``python -m engine serve ...``: the same as the ``grove`` console script."""

import sys

from engine.cli import main

sys.exit(main())
