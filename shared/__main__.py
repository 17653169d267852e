"""``python -m shared <stage> ...``: the course's command-line program (see :mod:`shared.cli`)."""

import sys

from shared.cli import main

if __name__ == "__main__":
    sys.exit(main())
