"""``python -m vh_lens ...``: the ``vh-lens`` command line (:mod:`vh_lens.cli`)."""

import sys

from vh_lens.cli import main

if __name__ == "__main__":
    sys.exit(main())
