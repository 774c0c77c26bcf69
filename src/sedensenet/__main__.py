"""``python -m sedensenet`` (and ``torchrun -m sedensenet``) runs the command line."""

import sys

from sedensenet.cli import main

if __name__ == "__main__":
    sys.exit(main())
