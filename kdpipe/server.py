"""A fork server that runs kdpipe commands without paying for `import torch` in every job.

A workflow run makes hundreds of short `python -m kdpipe <step> ...` calls, and importing torch
(~2.5 s) often costs more than the step itself. So the workflow starts one long-lived server per
run (`start`) that has torch and the package imported, and exports its socket path in the
environment variable `KDPIPE_SERVER`. Each `python -m kdpipe` front then calls `delegate`, which
hands its argv, working directory, environment and its own stdin/stdout/stderr to the server; the
server forks a child that runs the command as if it were the front's own process, and the front
exits with the child's exit code. Without a server, the front runs the command in-process.

Protocol: one Unix stream socket (mode 0600), newline-delimited JSON messages.
- On accepting a connection the server sends `{"server_pid": N, "slurm_job_id": ID or null}`.
  The client goes on only if `slurm_job_id` equals its own `SLURM_JOB_ID`, so that a server
  started on a login node never runs work that SLURM gave to a job (and vice versa).
- The client sends `{"argv0", "argv", "cwd", "environ"}` with its file descriptors 0, 1 and 2
  attached (SCM_RIGHTS), or `{"shutdown": true}`.
- The server answers `{"pid": N}` as soon as it has forked, then `{"exit": code}` when the child
  ends, and closes the connection; `{"error": why}` instead of a pid means nothing was run.
  A child killed by signal N reports `128 + N`, as a shell does, so the code can be passed to
  `sys.exit` unchanged.
- If the client goes away before its child ends, the server sends the child SIGTERM, then SIGKILL
  after `KILL_GRACE_S`.

The child closes the server's sockets, takes the client's fds as 0/1/2, its cwd and environment,
restores the default signal handlers, sets `sys.argv`, calls the entry function
(`main(argv) -> int`) and leaves with `os._exit`: an uncaught exception prints its traceback on
the client's stderr and exits 1, as the interpreter would. Unlike an interpreter exit, atexit
handlers do not run in the child.

Fork safety: the server runs one thread and never runs torch computations: importing torch is
fine, but any tensor operation in the server would start OpenMP/intra-op threads whose locks a
forked child inherits in an undefined state. Each child sets its own thread count. (The native
thread pool that OpenBLAS starts when numpy is imported re-creates itself after fork.) State
that libraries fix at import time follows the server's environment, not the client's; the one
exception handled here is torch's thread count, which the child sets from the client's
`OMP_NUM_THREADS` (Snakemake sets it to the job's threads).

The server exits when `parent_pid` is gone (checked every `POLL_S`), after `idle_timeout`
seconds without a running command, on a shutdown request, or on SIGTERM or SIGINT; it removes
its socket file and kills the children still running.

The front imports this module on every call, so it imports only the standard library.
"""

import argparse
import fcntl
import importlib
import io
import json
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback

SOCKET_ENV = "KDPIPE_SERVER"  # environment variable that holds the server's socket path
DEFAULT_ENTRY = "kdpipe.cli:main"
POLL_S = 0.5  # how often the server checks its parent and idle time, seconds
KILL_GRACE_S = 5.0  # seconds between SIGTERM and SIGKILL of an orphaned child
CONNECT_TIMEOUT_S = 10.0  # seconds a client waits for the server's greeting
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # client -> child
_BLOCKED_AROUND_FORK = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}


# ----------------------------------------------------------------------------- client side

def delegate(argv, socket_path=None):
    """Run `argv` in a child of the fork server; return its exit code, or None if no server fits.

    None (run the command in-process) when `socket_path` (default: $KDPIPE_SERVER) is unset,
    the socket is absent or refuses, the server belongs to another SLURM job, or it refuses the
    request before forking. Once the server has forked, the command is never run again here:
    if the server dies mid-request, the child gets SIGTERM, a message goes to stderr and the
    result is 1.
    SIGINT, SIGTERM and SIGHUP received meanwhile are forwarded to the child. Main thread only.
    """
    socket_path = socket_path or os.environ.get(SOCKET_ENV)
    if not socket_path:
        return None
    connection = _connect(socket_path)
    if connection is None:
        return None
    sock, replies, hello = connection
    with sock, replies:
        if hello.get("slurm_job_id") != os.environ.get("SLURM_JOB_ID"):
            return None
        request = _encode({"argv0": sys.argv[0], "argv": list(argv), "cwd": os.getcwd(),
                           "environ": dict(os.environ)})
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        try:
            sent = socket.send_fds(sock, [request], [0, 1, 2])
            if sent < len(request):  # (sending nothing to a closed peer would fail, too)
                sock.sendall(request[sent:])
        except OSError:  # the newline that ends the request was not sent: nothing ran
            return None
        reply = _read_message(replies)
        if reply is not None and "error" in reply:
            print(f"kdpipe: the fork server at {socket_path} refused {argv!r}: {reply['error']};"
                  " running it in-process", file=sys.stderr)
            return None
        if reply is None or "pid" not in reply:
            return _server_lost(socket_path, argv)
        child = reply["pid"]

        def forward(signum, frame):
            try:
                os.kill(child, signum)
            except ProcessLookupError:  # the child has just ended; its exit code is on the way
                pass

        # A signal that arrives before these handlers are in place kills this process; the
        # server then sees the connection close and kills the child, which is just as good.
        previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
        try:
            reply = _read_message(replies)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if reply is None or "exit" not in reply:
            # Nobody else would stop the orphan, which could go on writing this job's outputs.
            _signal(child, signal.SIGTERM)
            return _server_lost(socket_path, argv)
        return reply["exit"]


def start(socket_path, preload=(), entry=DEFAULT_ENTRY, timeout=60.0):
    """Start `python -m kdpipe.server` in a new session, tied to this process; return the Popen.

    `preload` names the modules the server imports before forking. Waits until the server
    answers on `socket_path`; raises RuntimeError if it exits first, TimeoutError after
    `timeout` seconds.
    """
    command = [sys.executable, "-m", "kdpipe.server", "--socket", str(socket_path),
               "--entry", entry, "--parent-pid", str(os.getpid())]
    if preload:
        command += ["--preload", ",".join(preload)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        connection = _connect(socket_path)
        if connection is not None:
            sock, replies, hello = connection
            sock.close()
            replies.close()
            if hello.get("server_pid") == process.pid:  # not a server left at the same path
                return process
        if process.poll() is not None:
            raise RuntimeError(f"the fork server for {socket_path} exited with code "
                               f"{process.returncode} before it listened")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise TimeoutError(f"the fork server for {socket_path} did not listen "
                               f"within {timeout} s")
        time.sleep(0.05)


def stop(process, socket_path, timeout=KILL_GRACE_S + 5.0):
    """Ask the server started by `start` to shut down and wait for it (SIGKILL after `timeout` s)."""
    connection = _connect(socket_path)
    if connection is None:
        process.terminate()
    else:
        sock, replies, _ = connection
        with sock, replies:
            sock.sendall(_encode({"shutdown": True}))
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _connect(socket_path):
    """(socket, reply stream, greeting) of the server at `socket_path`, or None if none answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    replies = sock.makefile("rb")
    try:
        sock.connect(socket_path)
        hello = _read_message(replies)
    except OSError:
        hello = None
    if hello is None:
        replies.close()
        sock.close()
        return None
    sock.settimeout(None)
    return sock, replies, hello


def _read_message(stream):
    """The next JSON message from a server's reply stream; None at end of stream or on error."""
    try:
        line = stream.readline()
        return json.loads(line) if line else None
    except (OSError, ValueError):
        return None


def _server_lost(socket_path, argv):
    print(f"kdpipe: the fork server at {socket_path} went away while running {argv!r}; the "
          "command may have partly run, was stopped and is not run again", file=sys.stderr)
    return 1


def _encode(message):
    return json.dumps(message).encode() + b"\n"


# ----------------------------------------------------------------------------- server side

def serve(socket_path, preload=(), entry=DEFAULT_ENTRY, parent_pid=None, idle_timeout=None):
    """Import `preload`, then answer requests on `socket_path` until told to stop (see module doc).

    `entry` is "module:function", a function `f(argv: list[str]) -> int`; it is imported here,
    before forking. `parent_pid`: exit when that process is gone. `idle_timeout`: exit after so
    many seconds without a running command. Must run in the main thread.
    """
    for name in preload:
        importlib.import_module(name)
    module_name, function_name = entry.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    if threading.active_count() > 1:
        print(f"kdpipe.server: warning: Python threads are running after importing "
              f"{list(preload)} and {module_name}; forking may deadlock the children",
              file=sys.stderr)
    server = _ForkServer(socket_path, function, parent_pid, idle_timeout)
    try:
        server.run()
    finally:
        server.close()


class _Connection:
    """One client: its socket, the bytes and fds of its request so far, and its child's pid."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.fds = []
        self.child = None


class _ForkServer:

    def __init__(self, socket_path, entry, parent_pid, idle_timeout):
        self.socket_path = socket_path
        self.entry = entry
        self.parent_pid = parent_pid
        # A parent that started us directly is gone as soon as we are re-parented, even while
        # it is an unreaped zombie that `kill(pid, 0)` still finds.
        self.parent_is_direct = parent_pid == os.getppid()
        self.idle_timeout = idle_timeout
        self.stopping = False
        self.last_activity = time.monotonic()
        self.connections = set()
        self.children = {}  # pid -> its _Connection, or None once the client has gone
        self.kill_deadlines = {}  # pid -> monotonic time at which SIGTERM becomes SIGKILL

        self.listener = _listen(socket_path)
        self.socket_inode = os.stat(socket_path).st_ino
        # Signals only write a byte to `wakeup`; the loop below does the work.
        self.wakeup, self.wakeup_writer = socket.socketpair()
        for sock in (self.listener, self.wakeup, self.wakeup_writer):
            sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wakeup, selectors.EVENT_READ)
        self.previous_wakeup_fd = signal.set_wakeup_fd(self.wakeup_writer.fileno(),
                                                       warn_on_full_buffer=False)
        self.previous_handlers = {
            signal.SIGCHLD: signal.signal(signal.SIGCHLD, lambda signum, frame: None),
            signal.SIGTERM: signal.signal(signal.SIGTERM, self._request_stop),
            signal.SIGINT: signal.signal(signal.SIGINT, self._request_stop),
        }

    def _request_stop(self, signum, frame):
        self.stopping = True

    def run(self):
        while not self.stopping:
            for key, _ in self.selector.select(POLL_S):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self.wakeup:
                    self._drain_wakeup()
                elif key.data in self.connections:  # not closed earlier in this round
                    self._receive(key.data)
            self._reap()
            now = time.monotonic()
            for pid, deadline in list(self.kill_deadlines.items()):
                if now >= deadline:
                    _signal(pid, signal.SIGKILL)
                    del self.kill_deadlines[pid]
            if self.parent_pid is not None and not self._parent_alive():
                self.stopping = True
            if (self.idle_timeout is not None and not self.children
                    and now - self.last_activity > self.idle_timeout):
                self.stopping = True

    def _parent_alive(self):
        if self.parent_is_direct:
            return os.getppid() == self.parent_pid
        try:
            os.kill(self.parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, but another user's
            pass
        return True

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        connection = _Connection(sock)
        self.connections.add(connection)
        self.selector.register(sock, selectors.EVENT_READ, connection)
        self.last_activity = time.monotonic()
        self._send(connection, {"server_pid": os.getpid(),
                                "slurm_job_id": os.environ.get("SLURM_JOB_ID")})

    def _drain_wakeup(self):
        try:
            while self.wakeup.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _receive(self, connection):
        try:
            data, fds, _, _ = socket.recv_fds(connection.sock, 1 << 16, 3)
        except BlockingIOError:
            return
        except OSError:  # e.g. the client was killed: connection reset
            data, fds = b"", []
        connection.fds += fds
        if not data:
            self._disconnect(connection)
            return
        if connection.child is not None:  # a client says nothing after its request
            return
        connection.buffer += data
        if b"\n" in connection.buffer:
            line = connection.buffer.split(b"\n", 1)[0]
            self._handle(connection, line)

    def _handle(self, connection, line):
        try:
            request = json.loads(line)
            if request.get("shutdown"):
                self.stopping = True
                self._close(connection)
                return
            argv, cwd, environ = request["argv"], request["cwd"], request["environ"]
            argv0 = request["argv0"]
        except (ValueError, AttributeError, KeyError) as error:
            self._refuse(connection, f"malformed request: {error!r}")
            return
        if len(connection.fds) != 3:
            self._refuse(connection, f"expected 3 file descriptors, got {len(connection.fds)}")
            return
        for stream in (sys.stdout, sys.stderr):  # or the child would write our buffered output
            if stream is not None:
                stream.flush()
        # Blocked until the child has restored default handlers, so that a signal forwarded to
        # a fresh child is never taken by the server's handlers still installed in it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_AROUND_FORK)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED_AROUND_FORK)
            self._refuse(connection, f"fork failed: {error}")
            return
        if pid == 0:
            self._run_child(connection, argv0, argv, cwd, environ)  # never returns
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED_AROUND_FORK)
        for fd in connection.fds:
            os.close(fd)
        connection.fds = []
        connection.child = pid
        self.children[pid] = connection
        self._send(connection, {"pid": pid})

    def _run_child(self, connection, argv0, argv, cwd, environ):
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED_AROUND_FORK)
            self.selector.close()
            for sock in (self.listener, self.wakeup, self.wakeup_writer,
                         *(other.sock for other in self.connections)):
                sock.close()
            _take_stdio(connection.fds)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(environ)
            _reopen_std_streams()
            _set_torch_threads_from_environment()
            sys.argv = [argv0, *argv]
            code = _call(self.entry, argv)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.kill_deadlines.pop(pid, None)
            self.last_activity = time.monotonic()
            connection = self.children.pop(pid, None)
            if connection is not None:
                code = os.waitstatus_to_exitcode(status)
                self._send(connection, {"exit": code if code >= 0 else 128 - code})
                self._close(connection)

    def _disconnect(self, connection):
        """The client went away: kill its child if that still runs."""
        pid = connection.child
        self._close(connection)
        if pid in self.children:
            self.children[pid] = None
            _signal(pid, signal.SIGTERM)
            self.kill_deadlines[pid] = time.monotonic() + KILL_GRACE_S

    def _refuse(self, connection, reason):
        self._send(connection, {"error": reason})
        self._close(connection)

    def _send(self, connection, message):
        try:
            connection.sock.sendall(_encode(message))
        except OSError:  # the client has gone; reading its socket will tell
            pass

    def _close(self, connection):
        if connection not in self.connections:
            return
        self.connections.remove(connection)
        self.selector.unregister(connection.sock)
        connection.sock.close()
        for fd in connection.fds:
            os.close(fd)
        connection.fds = []

    def close(self):
        """Kill the children still running, close every socket, remove the socket file."""
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        while self.children:
            if time.monotonic() > deadline:
                for pid in self.children:
                    _signal(pid, signal.SIGKILL)
            time.sleep(0.05)
            self._reap()
        for connection in list(self.connections):
            self._close(connection)
        signal.set_wakeup_fd(self.previous_wakeup_fd)
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.selector.close()
        for sock in (self.listener, self.wakeup, self.wakeup_writer):
            sock.close()
        try:
            if os.stat(self.socket_path).st_ino == self.socket_inode:  # still ours
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass


def _listen(socket_path):
    """A listening socket at `socket_path`, mode 0600, replacing the file of a dead server."""
    try:
        mode = os.stat(socket_path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{socket_path} exists and is not a socket")
        connection = _connect(socket_path)
        if connection is not None:
            connection[0].close()
            connection[1].close()
            raise RuntimeError(f"a fork server already listens at {socket_path}")
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(0o177)  # created 0600: no moment at which others could connect
    try:
        listener.bind(socket_path)
    finally:
        os.umask(previous_umask)
    listener.listen(64)
    return listener


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------- in the child

def _take_stdio(fds):
    """Make the client's three fds this process's 0, 1 and 2, and close the received copies."""
    # Move them above 2 first: a received fd may itself be 0, 1 or 2 if the server's were closed.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in fds]
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(high):
        os.dup2(fd, target)
        os.close(fd)


def _reopen_std_streams():
    """New sys.stdin/stdout/stderr on fds 0-2, buffered as the interpreter would buffer them."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))  # as `python -u`
    for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        if fd == 0:
            binary = io.open(fd, "rb", closefd=False)
        else:
            binary = io.open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)
        old = getattr(sys, name)
        stream = io.TextIOWrapper(
            binary, encoding=getattr(old, "encoding", None), errors=getattr(old, "errors", None),
            line_buffering=fd == 2 or os.isatty(fd), write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _set_torch_threads_from_environment():
    """torch read OMP_NUM_THREADS when the server imported it; apply the client's value."""
    torch = sys.modules.get("torch")
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if torch is not None and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def _call(entry, argv):
    """Call the entry function and turn its outcome into an exit status, as the interpreter would."""
    try:
        code = _exit_status(entry(argv))
    except SystemExit as exit:
        code = _exit_status(exit.code)
    except BaseException as error:
        # The traceback starts at the entry function, as it would in an interpreter's main.
        traceback.print_exception(type(error), error, error.__traceback__.tb_next)
        # An interpreter stopped by Ctrl-C kills itself with SIGINT: 128 + SIGINT to a caller.
        code = 128 + signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # e.g. a closed pipe; the interpreter exits 120 then
        code = code or 120
    return code


def _exit_status(code):
    """The process exit status of `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m kdpipe.server",
        description="Fork server for kdpipe commands (see kdpipe/server.py).")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--preload", default="",
                        help="comma-separated modules to import before forking, e.g. torch")
    parser.add_argument("--entry", default=DEFAULT_ENTRY,
                        help="module:function run in each child (default: %(default)s)")
    parser.add_argument("--parent-pid", type=int,
                        help="exit when the process with this pid is gone")
    parser.add_argument("--idle-timeout", type=float,
                        help="exit after this many seconds without a running command")
    args = parser.parse_args(argv)
    preload = [name for name in args.preload.split(",") if name]
    serve(args.socket, preload, args.entry, args.parent_pid, args.idle_timeout)


if __name__ == "__main__":
    main()
