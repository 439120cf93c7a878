"""``python -m dynlearn``: the same as the ``dynlearn`` command."""

import sys

from dynlearn.cli import main

if __name__ == "__main__":
    sys.exit(main())
