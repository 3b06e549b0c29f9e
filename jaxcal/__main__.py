"""``python -m jaxcal``: the ``jaxcal`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
