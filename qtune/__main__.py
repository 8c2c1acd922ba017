"""``python -m qtune``: the same command line as ``qtune`` (:mod:`qtune.cli`)."""

import sys

from qtune.cli import main

sys.exit(main())
