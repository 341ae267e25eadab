#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for running the workflow
# through `snakemake --profile slurm` in tests and CI.
#
# Root, Debian, no systemd: the daemons are started by hand. Idempotent: a
# second call with the cluster up and its configuration unchanged does nothing
# but check that the node is idle. The node advertises FAKE_GPUS fake GPUs
# (character devices that behave like /dev/null) so that `--gpus=1` is
# scheduled and jobs see CUDA_VISIBLE_DEVICES; no GPU code can run on them.
#
# Usage: bash tests/slurm/start_cluster.sh      stop: tests/slurm/stop_cluster.sh
set -euo pipefail

PARTITION=main           # the default partition; the profile needs no name for it
FAKE_GPUS=2              # two groups of training jobs can hold a GPU at once
OS_RESERVE_MB=4096       # memory kept from SLURM for the OS and the submitting snakemake
DEF_MEM_PER_CPU_MB=1024  # for jobs that request no memory
# Completed jobs stay visible to squeue this long (s). The Snakemake SLURM plugin
# polls with squeue only when MinJobAge >= 3 x its first status-check delay (40 s
# by default); otherwise it switches to sacct, which sees no job here (no slurmdbd),
# and would poll forever.
MIN_JOB_AGE_S=600
WAIT_IDLE_S=60

NODE=$(hostname -s)
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

say() { echo "[start_cluster] $*"; }
# alive NAME PIDFILE: the pid file names a running NAME, not a dead one's leftover
# or another process that got its pid.
alive() {
    local pid
    [[ -s $2 ]] && pid=$(cat "$2") || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] && grep -qE '^State:\s+[^ZX]' "/proc/$pid/status"
}

# --- packages ---------------------------------------------------------------
missing=()
for pkg in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "packages present: slurmctld slurmd slurm-client munge"
fi

# --- configuration ----------------------------------------------------------
# slurmd -C reports the real topology; declaring more than it finds drains the node.
read -r cpus sockets cores threads real_mem < <(slurmd -C | head -1 | tr ' ' '\n' | awk -F= '
    {v[$1] = $2}
    END {print v["CPUs"], v["SocketsPerBoard"], v["CoresPerSocket"], v["ThreadsPerCore"], v["RealMemory"]}')
[[ $cpus =~ ^[0-9]+$ && $real_mem =~ ^[0-9]+$ ]] || { say "slurmd -C reported no CPUs or memory"; exit 1; }
mem_mb=$((real_mem - OS_RESERVE_MB))

gpu_files=()
for ((i = 0; i < FAKE_GPUS; i++)); do gpu_files+=("/dev/kdpipe-fake-gpu$i"); done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/slurm.conf" <<EOF
# Written by tests/slurm/start_cluster.sh: a one-node test cluster.
ClusterName=kdpipe
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ReturnToService=2
# No cgroups here (gVisor, no systemd): track job processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU_MB
MinJobAge=$MIN_JOB_AGE_S
KillWait=5
InactiveLimit=0
MailProg=/bin/true
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem_mb Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

{
    echo "# Written by tests/slurm/start_cluster.sh: fake GPUs, character devices 1:3 (/dev/null)."
    for f in "${gpu_files[@]}"; do echo "NodeName=$NODE Name=gpu File=$f"; done
} >"$tmp/gres.conf"

for f in "${gpu_files[@]}"; do
    [[ -c $f ]] || { mknod "$f" c 1 3; say "made fake GPU device $f"; }
done

changed=0
for conf in slurm.conf gres.conf; do
    cmp -s "$tmp/$conf" "$CONF_DIR/$conf" || changed=1
done
if ((changed)); then
    # Daemons read their configuration at start: stop any running ones first.
    bash "$(dirname "$0")/stop_cluster.sh" | sed 's/^/  /'
    for conf in slurm.conf gres.conf; do
        cmp -s "$tmp/$conf" "$CONF_DIR/$conf" && continue
        install -m 0644 "$tmp/$conf" "$CONF_DIR/$conf"
        say "wrote $CONF_DIR/$conf"
    done
fi
install -d -o slurm -g slurm "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"

# --- daemons ----------------------------------------------------------------
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0600 /etc/munge/munge.key
    say "made /etc/munge/munge.key"
fi
if alive munged "$MUNGE_PID"; then
    say "munged running (pid $(cat "$MUNGE_PID"))"
else
    # --force: start over a socket left by a munged that was killed.
    runuser -u munge -- /usr/sbin/munged --force
    say "started munged"
fi
munge -n | unmunge >/dev/null || { say "munge credentials fail; see /var/log/munge/munged.log"; exit 1; }

if alive slurmctld "$CTLD_PID"; then
    say "slurmctld running (pid $(cat "$CTLD_PID"))"
else
    # -c: a test cluster starts without the jobs of an earlier life.
    slurmctld -c
    say "started slurmctld"
fi
if alive slurmd "$SLURMD_PID"; then
    say "slurmd running (pid $(cat "$SLURMD_PID"))"
else
    slurmd -N "$NODE"
    say "started slurmd"
fi

# --- wait for the node ------------------------------------------------------
state=""
for ((i = 0; i < WAIT_IDLE_S * 5; i++)); do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    case $state in
        idle | mixed | allocated) break ;;
        down* | drain* | fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
case $state in
    idle | mixed | allocated) ;;
    *)
        say "node $NODE is '$state' after ${WAIT_IDLE_S}s; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
        scontrol show node "$NODE" >&2 || true
        exit 1
        ;;
esac
say "node $NODE is $state: $cpus CPUs, ${mem_mb} MB, gpu:$FAKE_GPUS (fake), partition $PARTITION"
sinfo -N -o '%N %P %T %c %m %G'
say "logs in $LOG_DIR; stop with tests/slurm/stop_cluster.sh"
