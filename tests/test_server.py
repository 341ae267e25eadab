"""Tests of the fork server (kdpipe/server.py) and of the `python -m kdpipe` front.

Commands come from tests/server_entry.py. Clients are separate processes so that the child
writes to their own fds; `delegated` runs a client that cannot fall back to running in-process,
so a passing comparison proves that the server ran the command.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

import kdpipe.__main__ as front
from kdpipe import server

REPO = Path(__file__).resolve().parents[1]
PYTHONPATH = os.pathsep.join([str(REPO / "tests"), str(REPO)])  # server_entry, then kdpipe
ENTRY = "server_entry:main"
TIMEOUT_S = 20.0  # bound on any wait: a hang fails the test instead of blocking the run
DELEGATE_ONLY = ("import sys; from kdpipe import server; code = server.delegate(sys.argv[1:]); "
                 "sys.exit('not delegated' if code is None else code)")


@pytest.fixture
def socket_path(monkeypatch):
    """A fresh short socket path; servers and clients started here find server_entry."""
    directory = tempfile.mkdtemp(dir="/tmp")  # AF_UNIX paths must stay under ~107 bytes
    monkeypatch.setenv("PYTHONPATH", PYTHONPATH)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv(server.SOCKET_ENV, raising=False)
    yield os.path.join(directory, "s")
    shutil.rmtree(directory)


@pytest.fixture
def served(socket_path):
    """(socket path, server process) of a server that runs server_entry commands."""
    process = server.start(socket_path, entry=ENTRY)
    yield socket_path, process
    server.stop(process, socket_path)


def client_command(args, delegate_only):
    if delegate_only:
        return [sys.executable, "-c", DELEGATE_ONLY, *args]
    return [sys.executable, "-m", "server_entry", *args]


def client_env(socket_path, **variables):
    env = {**os.environ, **variables}
    if socket_path is not None:
        env[server.SOCKET_ENV] = socket_path
    return env


def delegated(args, socket_path, cwd=None, input=None, **variables):
    """Run server_entry ARGS through the server only; CompletedProcess with text output."""
    return subprocess.run(client_command(args, True), cwd=cwd, input=input, text=True,
                          capture_output=True, env=client_env(socket_path, **variables),
                          timeout=TIMEOUT_S)


def in_process(args, cwd=None, input=None):
    return subprocess.run(client_command(args, False), cwd=cwd, input=input, text=True,
                          capture_output=True, env=client_env(None), timeout=TIMEOUT_S)


def wait_until(condition, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def gone(pid):
    """True once no process has this pid (a zombie still counts as present)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def gone_or_zombie(pid):
    """For a process whose reaping is up to init, which in a container may never happen."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def read_pid(path):
    assert wait_until(lambda: os.path.exists(path)), "the command never started"
    with open(path) as f:
        return int(f.read())


def accepts(socket_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(socket_path)
        except OSError:
            return False
    return True


@pytest.mark.parametrize("args, stdin, code", [
    (["echo", "out", "err", "0"], None, 0),
    (["echo", "out", "err", "3"], None, 3),
    (["cat"], "line one\nline two\n", 0),
])
def test_delegated_command_gives_the_same_output_and_code(served, args, stdin, code):
    socket_path, _ = served
    expected = in_process(args, input=stdin)
    result = delegated(args, socket_path, input=stdin)
    assert (result.stdout, result.stderr, result.returncode) == (
        expected.stdout, expected.stderr, expected.returncode)
    assert result.returncode == code


def test_exception_in_the_command_exits_1_with_its_traceback(served):
    socket_path, _ = served
    expected = in_process(["raise", "boom"])
    result = delegated(["raise", "boom"], socket_path)
    assert result.returncode == expected.returncode == 1
    assert result.stdout == expected.stdout == ""
    # In-process, the traceback also holds the front's own frames; from `main` on it is the same.
    assert result.stderr.startswith("Traceback (most recent call last):\n")
    assert result.stderr.splitlines()[-3:] == expected.stderr.splitlines()[-3:]
    assert result.stderr.splitlines()[-1] == "ValueError: boom"


def test_child_has_the_client_cwd_environment_and_argv(served, tmp_path):
    socket_path, _ = served
    result = delegated(["where", "KDPIPE_TEST_VARIABLE"], socket_path, cwd=tmp_path,
                       KDPIPE_TEST_VARIABLE="from the client")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"cwd": os.path.realpath(tmp_path),
                                         "variable": "from the client",
                                         "argv": ["-c", "where", "KDPIPE_TEST_VARIABLE"]}


def test_sigterm_to_the_client_kills_the_child(served, tmp_path):
    socket_path, _ = served
    pid_file = str(tmp_path / "pid")
    client = subprocess.Popen(client_command(["sleep", pid_file], True),
                              env=client_env(socket_path), stderr=subprocess.PIPE)
    child = read_pid(pid_file)
    assert child != client.pid
    client.send_signal(signal.SIGTERM)
    assert client.wait(TIMEOUT_S) == 128 + signal.SIGTERM
    assert wait_until(lambda: gone(child)), "the child survived, or was not reaped"


@pytest.mark.parametrize("stubborn", [False, True])
def test_server_kills_the_child_of_a_killed_client(socket_path, tmp_path, stubborn):
    # A child that ignores SIGTERM must die of the SIGKILL that follows within the test; any
    # other child must die of the SIGTERM, long before a SIGKILL would come.
    grace = 0.5 if stubborn else 2 * TIMEOUT_S
    code = f"import sys, kdpipe.server as s; s.KILL_GRACE_S = {grace}; s.main(sys.argv[1:])"
    process = subprocess.Popen([sys.executable, "-c", code, "--socket", socket_path,
                                "--entry", ENTRY], start_new_session=True)
    try:
        assert wait_until(lambda: accepts(socket_path))
        pid_file = str(tmp_path / "pid")
        args = ["sleep", pid_file] + (["stubborn"] if stubborn else [])
        client = subprocess.Popen(client_command(args, True), env=client_env(socket_path))
        child = read_pid(pid_file)
        client.kill()
        client.wait(TIMEOUT_S)
        assert wait_until(lambda: gone(child)), "the orphaned child survived, or was not reaped"
    finally:
        server.stop(process, socket_path)


def test_server_death_mid_request_stops_the_child_and_is_not_rerun(served, tmp_path):
    socket_path, process = served
    pid_file = str(tmp_path / "pid")
    # The real kind of front: it would run the command in-process if delegate returned None.
    client = subprocess.Popen(client_command(["sleep", pid_file], False),
                              env=client_env(socket_path), stderr=subprocess.PIPE, text=True)
    child = read_pid(pid_file)
    try:
        process.kill()
        _, stderr = client.communicate(timeout=TIMEOUT_S)  # a rerun would sleep for 60 s
        assert client.returncode == 1
        assert "went away" in stderr
        assert read_pid(pid_file) == child  # an in-process rerun would have written its own pid
        assert wait_until(lambda: gone_or_zombie(child))  # now a child of init
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)


def test_delegates_only_within_the_same_slurm_job(socket_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    process = server.start(socket_path, entry=ENTRY)
    try:
        assert delegated(["echo", "out", "err", "5"], socket_path).returncode == 5
        monkeypatch.setenv("SLURM_JOB_ID", "999")
        assert server.delegate(["echo", "out", "err", "5"], socket_path) is None
        monkeypatch.delenv("SLURM_JOB_ID")  # e.g. a login-node client and an in-job server
        assert server.delegate(["echo", "out", "err", "5"], socket_path) is None
    finally:
        server.stop(process, socket_path)


def test_server_of_another_slurm_job_is_not_used(served, monkeypatch):
    socket_path, _ = served  # started outside SLURM
    assert delegated(["echo", "out", "err", "5"], socket_path).returncode == 5
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert server.delegate(["echo", "out", "err", "5"], socket_path) is None


def test_without_a_server_delegate_returns_none(socket_path):
    assert server.delegate(["echo", "out", "err", "5"]) is None  # $KDPIPE_SERVER unset
    assert server.delegate(["echo", "out", "err", "5"], socket_path) is None  # no file
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(socket_path)  # a socket file with nobody listening: connection refused
        assert server.delegate(["echo", "out", "err", "5"], socket_path) is None


@pytest.mark.parametrize("direct_child", [True, False])
def test_server_exits_when_its_parent_dies(socket_path, direct_child):
    if direct_child:  # started by `start` in the parent
        code = ("import sys, time; from kdpipe import server; "
                "print(server.start(sys.argv[1], entry=sys.argv[2]).pid, flush=True); "
                "time.sleep(60)")
        parent = subprocess.Popen([sys.executable, "-c", code, socket_path, ENTRY],
                                  stdout=subprocess.PIPE, text=True)
        server_pid = int(parent.stdout.readline())
    else:  # told to watch some other process
        parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        process = subprocess.Popen([sys.executable, "-m", "kdpipe.server", "--socket",
                                    socket_path, "--entry", ENTRY, "--parent-pid",
                                    str(parent.pid)])
        server_pid = process.pid
        assert wait_until(lambda: accepts(socket_path))
    assert accepts(socket_path)
    time.sleep(2 * server.POLL_S)
    assert not gone_or_zombie(server_pid)  # it does wait while the parent lives
    parent.kill()
    parent.wait()
    assert wait_until(lambda: gone_or_zombie(server_pid))
    assert not os.path.exists(socket_path)
    if not direct_child:
        assert process.wait(TIMEOUT_S) == 0


@pytest.mark.parametrize("how", ["shutdown request", "SIGTERM", "idle timeout"])
def test_server_stops_and_removes_its_socket(socket_path, how):
    idle = ["--idle-timeout", "0.3"] if how == "idle timeout" else []
    process = subprocess.Popen([sys.executable, "-m", "kdpipe.server", "--socket", socket_path,
                                "--entry", ENTRY, *idle])
    assert wait_until(lambda: accepts(socket_path))
    assert delegated(["echo", "out", "err", "0"], socket_path).returncode == 0
    if how == "shutdown request":
        server.stop(process, socket_path)
    elif how == "SIGTERM":
        process.terminate()
    assert process.wait(TIMEOUT_S) == 0
    assert not os.path.exists(socket_path)


def test_second_server_on_a_live_socket_is_refused(served):
    socket_path, _ = served
    with pytest.raises(RuntimeError, match="exited with code 1"):
        server.start(socket_path, entry=ENTRY)
    assert delegated(["echo", "out", "err", "0"], socket_path).returncode == 0


def test_preloaded_module_is_not_imported_again(socket_path):
    assert json.loads(in_process(["modules", "colorsys"]).stdout)["preloaded"] is False
    process = server.start(socket_path, preload=["colorsys"], entry=ENTRY)
    try:
        report = json.loads(delegated(["modules", "colorsys"], socket_path).stdout)
    finally:
        server.stop(process, socket_path)
    assert report["preloaded"] is True
    assert report["import_pid"] == process.pid  # the entry module, too, came from the server
    assert report["pid"] != process.pid


def test_torch_works_in_concurrent_children_after_the_server_imported_it(socket_path,
                                                                         monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what torch in the server starts with
    process = server.start(socket_path, preload=["torch"], entry=ENTRY)
    clients = []
    try:
        for _ in range(2):
            clients.append(subprocess.Popen(
                client_command(["matmul"], True), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
                env=client_env(socket_path, OMP_NUM_THREADS="1")))
        outputs = [client.communicate(timeout=60) for client in clients]
    finally:
        for client in clients:
            client.kill()
        server.stop(process, socket_path)
    assert [client.returncode for client in clients] == [0, 0], outputs
    reports = [json.loads(stdout) for stdout, _ in outputs]
    assert reports[0] == reports[1]
    assert reports[0]["preloaded"] is True
    assert reports[0]["threads_at_start"] == 1  # the client's OMP_NUM_THREADS, not the server's


def test_front_runs_a_command_through_the_server(served):
    socket_path, _ = served
    result = subprocess.run([sys.executable, "-m", "kdpipe", "echo", "out", "err", "3"],
                            capture_output=True, text=True, env=client_env(socket_path),
                            timeout=TIMEOUT_S)
    assert (result.stdout, result.stderr, result.returncode) == ("out\n", "err\n", 3)


@pytest.mark.parametrize("argv, delegate_code, code, delegated_argv, ran_argv", [
    (["train", "x"], 4, 4, [["train", "x"]], []),
    (["train", "x"], None, 0, [["train", "x"]], [["train", "x"]]),
    (["serve", "--socket", "s"], 4, 0, [], [["serve", "--socket", "s"]]),
])
def test_front_delegates_every_command_but_serve(monkeypatch, argv, delegate_code, code,
                                                 delegated_argv, ran_argv):
    delegate_calls, cli_calls = [], []

    def delegate(argv):
        delegate_calls.append(argv)
        return delegate_code

    def cli_main(argv):
        cli_calls.append(argv)
        return 0

    monkeypatch.setattr(server, "delegate", delegate)
    monkeypatch.setitem(sys.modules, "kdpipe.cli", types.SimpleNamespace(main=cli_main))
    assert front.main(argv) == code
    assert delegate_calls == delegated_argv
    assert cli_calls == ran_argv
