"""`python -m kdpipe ARGS`: run a kdpipe command in the fork server named by $KDPIPE_SERVER if
one fits (see kdpipe/server.py), else in this process. Only the standard library is imported
before that choice, so a delegated command costs tens of milliseconds here."""

import sys

from kdpipe import server


def main(argv):
    """Run the command `argv` (without the program name); return its exit code."""
    # `serve` starts a fork server itself: delegating it would nest one server in another.
    code = None if argv[:1] == ["serve"] else server.delegate(argv)
    if code is None:
        from kdpipe.cli import main as run_command

        code = run_command(argv)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
