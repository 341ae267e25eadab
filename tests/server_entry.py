"""Small commands for tests/test_server.py, and a front like `python -m kdpipe` that runs them.

`python -m server_entry COMMAND ARGS` (with tests/ on PYTHONPATH) delegates to the fork server
in $KDPIPE_SERVER when there is one, else runs `main` in-process.
"""

import json
import os
import signal
import sys
import time

from kdpipe import server

IMPORT_PID = os.getpid()  # the process that imported this module: the server, when preloaded


def _write_pid(path):
    with open(path + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".part", path)  # so that a reader never sees a partial pid


def main(argv):
    command, *args = argv
    if command == "echo":  # echo STDOUT STDERR CODE
        print(args[0])
        print(args[1], file=sys.stderr)
        return int(args[2])
    if command == "cat":
        sys.stdout.write(sys.stdin.read())
        return 0
    if command == "where":  # where VARIABLE: the working directory, one variable, sys.argv
        print(json.dumps({"cwd": os.getcwd(), "variable": os.environ.get(args[0]),
                          "argv": sys.argv}))
        return 0
    if command == "raise":
        raise ValueError(args[0])
    if command == "sleep":  # sleep PIDFILE [stubborn]: stubborn ignores SIGTERM
        if args[1:] == ["stubborn"]:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _write_pid(args[0])
        time.sleep(60)
        return 0
    if command == "modules":  # modules NAME: was NAME imported before this command ran?
        print(json.dumps({"preloaded": args[0] in sys.modules, "import_pid": IMPORT_PID,
                          "pid": os.getpid()}))
        return 0
    if command == "matmul":
        preloaded = "torch" in sys.modules
        import torch

        threads_at_start = torch.get_num_threads()
        torch.set_num_threads(1)
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(256, 256, generator=generator)
        print(json.dumps({"preloaded": preloaded, "threads_at_start": threads_at_start,
                          "sum": float((a @ a).sum())}))
        return 0
    raise ValueError(f"unknown command {command!r}")


if __name__ == "__main__":
    code = server.delegate(sys.argv[1:])
    if code is None:
        code = main(sys.argv[1:])
    sys.exit(code)
