#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by tests/slurm/start_cluster.sh:
# slurmd, slurmctld, then munged, each by its pid file. Configuration and the
# fake GPU devices stay, so the next start is quick. Pid files go: Debian's
# slurmctld prerm reads a leftover one as a live controller. Stopping a stopped
# cluster is fine.
set -euo pipefail

say() { echo "[stop_cluster] $*"; }

stop() {  # stop NAME PIDFILE: SIGTERM, then SIGKILL after 10 s
    local name=$1 pidfile=$2 pid i
    # A leftover pid file may name a process that is not ours any more.
    if ! { [[ -s $pidfile ]] && pid=$(cat "$pidfile") && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; }; then
        rm -f "$pidfile"
        say "$name not running"
        return
    fi
    kill "$pid"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped $name (pid $pid)"; return; }
        sleep 0.1
    done
    kill -KILL "$pid"
    rm -f "$pidfile"
    say "killed $name (pid $pid): no exit 10 s after SIGTERM"
}

stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop munged /run/munge/munged.pid
