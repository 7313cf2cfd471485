#!/usr/bin/env bash
# A real one-node SLURM on this machine, for the SLURM tests and for trying the launcher.
#
#   tools/slurm_local.sh start    install slurm-wlm + munge if missing (Debian packages), write a
#                                 slurm.conf for this machine, start munged, slurmctld and slurmd,
#                                 wait until `sinfo` shows the node idle (fast when already up)
#   tools/slurm_local.sh stop     cancel every job, stop the three daemons, forget the job state
#   tools/slurm_local.sh status   the daemons and `sinfo`; exit 0 when the node takes jobs
#
# Everything it writes lies in $DROPPOS_SLURM_DIR (default /var/lib/droppos-slurm): slurm.conf,
# the munge key and socket, the controller's state, slurmd's spool, the logs. The client
# commands (sbatch, sinfo, srun inside jobs) find the configuration through the link
# /etc/slurm/slurm.conf -> $DROPPOS_SLURM_DIR/slurm.conf, which is made only where no other
# slurm.conf is. The node: this machine's `nproc` CPUs and `free` memory (less 10 %), its
# NVIDIA GPUs as gres gpu when there are any; proctrack/linuxproc, task/none, no cgroups,
# select/cons_tres by CPU, one partition `local` (the default).
#
# Exit status: 0 ready; 3 SLURM cannot run here (not root, no package and no apt-get, a
# foreign slurm.conf): the tests skip with the printed reason; 1 it should have worked and
# did not (the line names the log to read).
# Env: DROPPOS_SLURM_DIR (state folder), DROPPOS_SLURM_PORT (slurmctld port, default 6817;
#      slurmd uses the next one), DROPPOS_SLURM_PARTITION (default local).
set -uo pipefail

STATE="${DROPPOS_SLURM_DIR:-/var/lib/droppos-slurm}"
PORT="${DROPPOS_SLURM_PORT:-6817}"
PARTITION="${DROPPOS_SLURM_PARTITION:-local}"
CONF="$STATE/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
MUNGE_DIR="$STATE/munge"
SOCKET="$MUNGE_DIR/munge.socket"
NODE="$(hostname -s 2>/dev/null || hostname)"
export SLURM_CONF="$CONF"

say() { echo "[slurm_local] $*"; }
cannot() { echo "[slurm_local] cannot run SLURM here: $*" >&2; exit 3; }
fail() { echo "[slurm_local] FAILED: $*" >&2; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

node_state() { timeout 10 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }

# ------------------------------------------------------------------ packages
have_packages() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null; }

install_packages() {
    have_packages && return 0
    command -v apt-get >/dev/null || cannot "slurmctld / slurmd / munged are not installed and there is no apt-get to install them"
    mkdir -p "$STATE/log"
    say "installing slurm-wlm and munge (apt-get; log: $STATE/log/apt.log)"
    local opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" slurm-wlm munge >"$STATE/log/apt.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$STATE/log/apt.log" 2>&1 \
            || fail "apt-get update failed (no Debian mirror reachable?); see $STATE/log/apt.log"
        DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" slurm-wlm munge >>"$STATE/log/apt.log" 2>&1 \
            || fail "apt-get install slurm-wlm munge failed; see $STATE/log/apt.log"
    fi
    have_packages || fail "slurm-wlm and munge installed but slurmctld / slurmd / sbatch / munged not on PATH"
}

# ------------------------------------------------------------------ configuration
gpu_count() {  # exactly one integer: 0 without nvidia-smi or when it lists no GPU (grep -c prints 0, exits 1)
    local n=""
    if command -v nvidia-smi >/dev/null; then
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    fi
    echo "${n:-0}"
}

write_conf() {
    local cpus mem gpus gres=""
    cpus="${DROPPOS_SLURM_CPUS:-$(nproc)}"
    mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
    gpus="$(gpu_count)"
    mkdir -p "$STATE"/{ctld,spool,log,run}
    if [ "$gpus" -gt 0 ]; then
        gres="Gres=gpu:$gpus"
        echo "Name=gpu File=/dev/nvidia[0-$((gpus - 1))]" >"$STATE/gres.conf.tmp" && mv "$STATE/gres.conf.tmp" "$STATE/gres.conf"
    else
        rm -f "$STATE/gres.conf"
    fi
    cat >"$CONF.tmp" <<EOF
# Written by tools/slurm_local.sh for $NODE: $cpus CPUs, $mem MB, $gpus GPU(s). Rewritten at each start.
ClusterName=droppos
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
AuthInfo=socket=$SOCKET,cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
SchedulerParameters=sched_interval=2,bf_interval=5
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=20
${gres:+GresTypes=gpu}
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    mkdir -p /etc/slurm
    if [ -L "$ETC_CONF" ] || [ ! -e "$ETC_CONF" ]; then
        ln -sfn "$CONF" "$ETC_CONF"
        if [ -f "$STATE/gres.conf" ]; then ln -sfn "$STATE/gres.conf" /etc/slurm/gres.conf; fi
    elif ! cmp -s "$ETC_CONF" "$CONF"; then
        cannot "$ETC_CONF is another SLURM's configuration (not a link to $CONF); move it away to use this one"
    fi
}

# ------------------------------------------------------------------ daemons
start_munge() {
    if pid_alive "$MUNGE_DIR/munged.pid" && [ -S "$SOCKET" ]; then return 0; fi
    mkdir -p "$MUNGE_DIR"
    chmod 0755 "$STATE" "$MUNGE_DIR"
    if [ ! -s "$MUNGE_DIR/munge.key" ]; then
        (umask 077 && dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none) \
            || fail "could not write the munge key $MUNGE_DIR/munge.key"
    fi
    chmod 0400 "$MUNGE_DIR/munge.key"
    rm -f "$SOCKET" "$SOCKET.lock"
    munged --force --key-file="$MUNGE_DIR/munge.key" --socket="$SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" >>"$MUNGE_DIR/munged.log" 2>&1 \
        || fail "munged did not start; last lines of $MUNGE_DIR/munged.log: $(tail -n 3 "$MUNGE_DIR/munged.log" | tr '\n' ' ')"
}

start_daemon() {  # name, pid file, log
    local name="$1" pid="$2" log="$3"
    pid_alive "$pid" && return 0
    "$name" -f "$CONF" >>"$log" 2>&1 || fail "$name did not start; last lines of $log: $(tail -n 5 "$log" | tr '\n' ' ')"
}

wait_idle() {
    local state="" i
    for i in $(seq 1 120); do
        state="$(node_state)"
        case "$state" in
            idle*|mixed*|allocated*) return 0 ;;
            down*|drain*|drng*|fail*)
                [ "$i" -gt 4 ] && timeout 10 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 ;;
        esac
        pid_alive "$STATE/run/slurmctld.pid" || fail "slurmctld exited; last lines of $STATE/log/slurmctld.log: $(tail -n 5 "$STATE/log/slurmctld.log" | tr '\n' ' ')"
        pid_alive "$STATE/run/slurmd.pid" || fail "slurmd exited; last lines of $STATE/log/slurmd.log: $(tail -n 5 "$STATE/log/slurmd.log" | tr '\n' ' ')"
        sleep 0.5
    done
    fail "node $NODE not idle after 60 s (state: ${state:-no answer from slurmctld}); see $STATE/log/slurmctld.log and slurmd.log"
}

running() {
    pid_alive "$MUNGE_DIR/munged.pid" && pid_alive "$STATE/run/slurmctld.pid" && pid_alive "$STATE/run/slurmd.pid"
}

start() {
    [ "$(id -u)" = 0 ] || cannot "tools/slurm_local.sh start must run as root (it installs packages and runs slurmd); you are $(id -un)"
    if running && [[ "$(node_state)" =~ ^(idle|mixed|allocated) ]]; then
        say "already running: node $NODE $(node_state), partition $PARTITION ($CONF)"
        return 0
    fi
    install_packages
    stop_daemons quiet
    write_conf
    rm -rf "$STATE/ctld"/* "$STATE/spool"/*  # a fresh controller: no jobs of an earlier session
    start_munge
    start_daemon slurmctld "$STATE/run/slurmctld.pid" "$STATE/log/slurmctld.log"
    start_daemon slurmd "$STATE/run/slurmd.pid" "$STATE/log/slurmd.log"
    wait_idle
    say "ready: node $NODE $(node_state), partition $PARTITION, $(grep -o 'CPUs=[0-9]* RealMemory=[0-9]*' "$CONF") ($CONF)"
}

stop_pid() {  # pid file: TERM, then KILL after 10 s
    local pid i
    [ -f "$1" ] || return 0
    pid="$(cat "$1" 2>/dev/null)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$1"
}

stop_daemons() {
    if [ "${1:-}" != quiet ] && pid_alive "$STATE/run/slurmctld.pid"; then
        timeout 10 scancel --full --quiet --user=root >/dev/null 2>&1 || true
        sleep 1
    fi
    stop_pid "$STATE/run/slurmd.pid"
    stop_pid "$STATE/run/slurmctld.pid"
    stop_pid "$MUNGE_DIR/munged.pid"
}

stop() {
    [ "$(id -u)" = 0 ] || cannot "tools/slurm_local.sh stop must run as root; you are $(id -un)"
    stop_daemons
    rm -rf "$STATE/ctld"/* "$STATE/spool"/*
    say "stopped (logs kept in $STATE/log)"
}

status() {
    local d
    for d in "munged:$MUNGE_DIR/munged.pid" "slurmctld:$STATE/run/slurmctld.pid" "slurmd:$STATE/run/slurmd.pid"; do
        if pid_alive "${d#*:}"; then say "${d%%:*} running (pid $(cat "${d#*:}"))"; else say "${d%%:*} not running"; fi
    done
    if running; then
        timeout 10 sinfo || true
        [[ "$(node_state)" =~ ^(idle|mixed|allocated) ]] && return 0
    fi
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: tools/slurm_local.sh start|stop|status" >&2; exit 2 ;;
esac
