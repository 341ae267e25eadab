"""`python -m kdpipe ARGS`: run a kdpipe command (kdpipe/cli.py)."""

import sys

from kdpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
