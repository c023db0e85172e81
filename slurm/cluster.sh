#!/usr/bin/env bash
# A real SLURM cluster on this one Debian machine, for tests and for trying a sweep before a
# real cluster: munged, slurmctld and one slurmd per node, started by hand (no systemd) with
# every file (config, munge key, state, logs, pid files) under one folder.
#
#   slurm/cluster.sh start  [--dir DIR] [--nodes N] [--gpus G] [--port P] [--partition NAME]
#                           [--install | --no-install] [--timeout S]
#   slurm/cluster.sh stop   [--dir DIR] [--timeout S]
#   slurm/cluster.sh status [--dir DIR]
#
# `start` is idempotent (a running cluster with the same settings is left alone) and ends when
# every node is idle in `sinfo`, or fails naming the log to read. `stop` cancels the cluster's
# jobs and stops exactly the daemons whose pid files are under DIR, nothing else.
# Then `source DIR/env.sh`: SLURM_CONF and a PATH whose `sacct` answers without slurmdbd.
set -euo pipefail
# The daemons live in /usr/sbin, which a non-root PATH may lack.
PATH=$PATH:/usr/sbin:/sbin

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly PACKAGES=(slurmctld slurmd slurm-client munge)

DIR="${MEDHPC_SLURM_DIR:-/tmp/medhpc-slurm}"
NODES=1
GPUS=0
PORT=6817
PARTITION=local
INSTALL=auto
TIMEOUT=30

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

log() { echo "cluster.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- pid files ---------------------------------------------------------------------------

# Whether process $1 runs: a zombie (left by an init that does not reap) has ended.
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Print the pid recorded in pid file $1 if that process is alive and is the daemon $2 started
# with our config (its command line contains $3); a recycled pid is never taken for ours.
live_pid() {
    local file=$1 name=$2 marker=$3 pid cmdline
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid ]] && running "$pid" || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$marker"* ]] || return 1
    echo "$pid"
}

# Stop the daemons given as "pidfile name marker" triples, together (each takes ~2 s to shut
# down): SIGTERM, then SIGKILL for any still alive after 10 s. Daemons not running are skipped.
stop_daemons() {
    local pids=() names=() pid i
    while (($# >= 3)); do
        if pid=$(live_pid "$1" "$2" "$3"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$2")
        fi
        rm -f "$1"
        shift 3
    done
    for ((i = 0; i < ${#pids[@]}; i++)); do
        local waited=0
        while running "${pids[i]}" && ((waited < 100)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        if running "${pids[i]}"; then
            log "${names[i]} (pid ${pids[i]}) ignored SIGTERM for 10 s; sending SIGKILL"
            kill -KILL "${pids[i]}" 2>/dev/null || true
        fi
        log "stopped ${names[i]} (pid ${pids[i]})"
    done
}

# --- settings derived from DIR ----------------------------------------------------------------

set_paths() {
    DIR=$(realpath -m "$DIR")
    CONF=$DIR/etc/slurm.conf
    SOCKET=$DIR/run/munge.socket
    MUNGE_PID=$DIR/run/munged.pid
    CTLD_PID=$DIR/run/slurmctld.pid
    LOGS=$DIR/log
}

node_names() {
    local i
    for ((i = 1; i <= NODES; i++)); do echo "node$i"; done
}

# Node names recorded in an existing config (stop/status must not trust --nodes).
configured_nodes() {
    local range
    range=$(sed -n 's/^NodeName=node\[1-\([0-9]*\)\].*/\1/p; s/^NodeName=node1 .*/1/p' "$CONF" | head -n 1)
    NODES=${range:-0}
    node_names
}

# --- start ---------------------------------------------------------------------------------

ensure_packages() {
    local missing=() cmd
    for cmd in munged slurmctld slurmd sbatch srun squeue sinfo scontrol scancel; do
        command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $INSTALL == no ]] || { [[ $INSTALL == auto ]] && { ((EUID != 0)) || ! command -v apt-get >/dev/null; }; }; then
        die "missing commands: ${missing[*]}; install the Debian packages ${PACKAGES[*]} (or run as root with apt-get, or pass --install)"
    fi
    mkdir -p "$LOGS"
    log "installing ${PACKAGES[*]} with apt-get (log: $LOGS/install.log)"
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}"; } \
        >"$LOGS/install.log" 2>&1; then
        tail -n 20 "$LOGS/install.log" >&2
        die "apt-get could not install ${PACKAGES[*]}; see $LOGS/install.log"
    fi
}

# The node line of this machine as slurmd sees it (CPUs, sockets, cores, threads, memory), so that
# slurmd never finds its node "smaller than configured" and drains it.
hardware() {
    local line
    line=$(slurmd -C 2>/dev/null | head -n 1) || true
    [[ $line == NodeName=* ]] || die "slurmd -C did not describe this machine (got: ${line:-nothing})"
    # Drop the NodeName; keep CPUs= Boards= SocketsPerBoard= CoresPerSocket= ThreadsPerCore= RealMemory=
    echo "${line#* }"
}

# slurmstepd listens on unix sockets under SlurmdSpoolDir (DIR/spool/NODE/NODE_JOB.STEP), and a
# unix socket path holds at most 107 characters: a job on a cluster with a longer DIR fails
# to launch ("launch failed requeued held"). Refuse such a DIR up front.
check_dir_length() {
    local longest="$DIR/spool/node$NODES/node${NODES}_99999999.4294967291"
    if ((${#longest} > 107)); then
        die "--dir $DIR is too long ($((${#DIR})) characters): SLURM's sockets under it would exceed the 107 a unix socket path allows; use a folder of at most $((107 - ${#longest} + ${#DIR})) characters, e.g. /tmp/medhpc-slurm"
    fi
}

write_config() {
    local hw nodes ports gres_line i user tmp
    hw=$(hardware)
    user=$(id -un)
    if ((NODES == 1)); then
        nodes=node1
        ports=$((PORT + 1))
    else
        nodes="node[1-$NODES]"
        ports="[$((PORT + 1))-$((PORT + NODES))]"
    fi
    gres_line=
    if ((GPUS > 0)); then
        gres_line=" Gres=gpu:$GPUS"
    fi
    mkdir -p "$DIR/etc" "$DIR/run" "$LOGS" "$DIR/state/ctld" "$DIR/spool" "$DIR/bin" "$DIR/dev"
    chmod 0755 "$DIR" "$DIR/etc" "$DIR/run" "$LOGS"
    tmp=$(mktemp "$DIR/etc/slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
# Written by slurm/cluster.sh; regenerated on every start.
ClusterName=medhpc
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here (no systemd): track processes by parent pid, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Start jobs as soon as resources free up, not on the default 3 s batching delay.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job with no --mem takes the whole node and jobs run one at a time.
DefMemPerCPU=512
# No slurmdbd: finished jobs are recorded one line each in JobCompLoc (read by bin/sacct).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
ReturnToService=2
KillWait=5
MailProg=/bin/true
$( ((GPUS > 0)) && echo "GresTypes=gpu")
NodeName=$nodes NodeAddr=127.0.0.1 Port=$ports $hw$gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f $CONF ]] && ! cmp -s "$tmp" "$CONF" && live_pid "$CTLD_PID" slurmctld "$CONF" >/dev/null; then
        rm -f "$tmp"
        die "a cluster is already running in $DIR with other settings (diff against $CONF); run '$0 stop --dir $DIR' first"
    fi
    mv "$tmp" "$CONF"
    chmod 0644 "$CONF"

    # Fake GPUs: slurmd needs a device file per GPU; links to /dev/null schedule like GPUs.
    : >"$DIR/etc/gres.conf"
    if ((GPUS > 0)); then
        for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$DIR/dev/gpu$i"; done
        echo "NodeName=$nodes Name=gpu File=$DIR/dev/gpu[0-$((GPUS - 1))]" >"$DIR/etc/gres.conf"
    fi

    # The key never changes once made: restarting with a new key would orphan running clients.
    if [[ ! -s $DIR/etc/munge.key ]]; then
        mungekey --create --keyfile="$DIR/etc/munge.key" --force >/dev/null 2>&1 ||
            dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1024 count=1 status=none
    fi
    chmod 0400 "$DIR/etc/munge.key"

    install -m 0755 "$SCRIPT_DIR/sacct-shim" "$DIR/bin/sacct"
    cat >"$DIR/env.sh" <<EOF
# Written by slurm/cluster.sh: 'source $DIR/env.sh' to use the test cluster.
export SLURM_CONF=$CONF
export MEDHPC_SLURM_DIR=$DIR
case ":\$PATH:" in
    *":$DIR/bin:"*) ;;
    *) export PATH="$DIR/bin:\$PATH" ;;
esac
EOF
}

# Size of each daemon's log when this start launched it: only what comes after is about now.
declare -A LOG_OFFSET=()

# Run daemon command "$@" (it forks into the background), appending its output to log $1.
launch() {
    local logfile=$1
    shift
    LOG_OFFSET[$logfile]=$(stat -c %s "$logfile" 2>/dev/null || echo 0)
    "$@" >>"$logfile" 2>&1
}

start_munged() {
    if live_pid "$MUNGE_PID" munged "$SOCKET" >/dev/null; then return 0; fi
    rm -f "$SOCKET" "$SOCKET.lock"
    # --force: munged refuses a socket under a folder that not everyone may enter (pytest's
    # 0700 temporary folders); only this cluster's daemons and its user talk to it.
    launch "$LOGS/munged.log" munged --force --socket="$SOCKET" --key-file="$DIR/etc/munge.key" \
        --pid-file="$MUNGE_PID" --log-file="$LOGS/munged.log" --seed-file="$DIR/run/munged.seed" ||
        fail_start "munged did not start" "$LOGS/munged.log"
}

start_slurmctld() {
    if live_pid "$CTLD_PID" slurmctld "$CONF" >/dev/null; then return 0; fi
    SLURM_CONF=$CONF launch "$LOGS/slurmctld.log" slurmctld -f "$CONF" ||
        fail_start "slurmctld did not start" "$LOGS/slurmctld.log"
}

start_slurmd() {
    local node=$1
    if live_pid "$DIR/run/slurmd-$node.pid" slurmd "$CONF" >/dev/null; then return 0; fi
    SLURM_CONF=$CONF launch "$LOGS/slurmd-$node.log" slurmd -f "$CONF" -N "$node" ||
        fail_start "slurmd $node did not start" "$LOGS/slurmd-$node.log"
}

# A failed start: show the end of the log that explains it, stop whatever of this cluster runs
# (all of it is ours: pid files under DIR), and exit 1.
fail_start() {
    local message=$1 logfile=$2
    if [[ -s $logfile ]]; then
        echo "--- last lines of $logfile" >&2
        tail -n 12 "$logfile" >&2
        echo "---" >&2
    fi
    cmd_stop >/dev/null 2>&1 || true
    die "$message; see $logfile (every log: $LOGS/; the daemons that had started are stopped again)"
}

# The first "fatal:" line a daemon wrote to its log since this start launched it, if any.
fatal_line() {
    local logfile=$1 offset=${LOG_OFFSET[$1]:-}
    [[ -n $offset && -f $logfile ]] || return 1
    tail -c "+$((offset + 1))" "$logfile" | grep -m 1 -E '(^|[] ])fatal:'
}

# Wait (at most TIMEOUT s, counted from $1) until the daemons started so far have written their
# pid files and, with $2 = nodes, every node is usable (with $2 = controller, until slurmctld
# answers). A daemon that logs a fatal error fails the start at once.
wait_ready() {
    local deadline=$(($1 + TIMEOUT)) phase=$2 states bad badlog node logfile line
    while :; do
        for logfile in "${!LOG_OFFSET[@]}"; do
            if line=$(fatal_line "$logfile"); then
                fail_start "$(basename "$logfile" .log) failed: $line" "$logfile"
            fi
        done
        bad=
        if ! live_pid "$MUNGE_PID" munged "$SOCKET" >/dev/null; then
            bad="munged is not running"
            badlog=$LOGS/munged.log
        elif ! live_pid "$CTLD_PID" slurmctld "$CONF" >/dev/null; then
            bad="slurmctld is not running"
            badlog=$LOGS/slurmctld.log
        elif [[ $phase == controller ]]; then
            SLURM_CONF=$CONF scontrol ping 2>/dev/null | grep -q 'is UP' && return 0
            bad="slurmctld does not answer (scontrol ping)"
            badlog=$LOGS/slurmctld.log
        fi
        if [[ -z $bad ]]; then
            for node in $(node_names); do
                if [[ -z $bad ]] && ! live_pid "$DIR/run/slurmd-$node.pid" slurmd "$CONF" >/dev/null; then
                    bad="slurmd $node is not running"
                    badlog=$LOGS/slurmd-$node.log
                fi
            done
        fi
        if [[ -z $bad ]]; then
            states=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %t' 2>/dev/null) || states=
            # Usable: idle, or busy with jobs (a restart while jobs run); not down, drained, unknown.
            if [[ $(grep -cE ' (idle|mix|alloc|comp)$' <<<"$states") -ge $NODES ]]; then
                return 0
            fi
            bad="nodes not usable (sinfo: $(echo "${states:-no answer from slurmctld}" | tr '\n' ' '))"
            badlog=$LOGS/slurmd-node1.log
        fi
        if ((SECONDS >= deadline)); then
            fail_start "cluster in $DIR not ready after ${TIMEOUT}s: $bad" "$badlog"
        fi
        sleep 0.2
    done
}

cmd_start() {
    set_paths
    check_dir_length
    ensure_packages
    write_config
    local began=$SECONDS node
    start_munged
    start_slurmctld
    # slurmd waits for the controller before it answers SIGTERM: start it once slurmctld is up.
    wait_ready "$began" controller
    for node in $(node_names); do start_slurmd "$node"; done
    wait_ready "$began" nodes
    log "cluster up in $DIR: $NODES node(s), $GPUS GPU(s) each, partition '$PARTITION', port $PORT"
    log "use it with: source $DIR/env.sh"
}

# --- stop ----------------------------------------------------------------------------------

# Cancel every job of this cluster and wait (bounded) until none is still running, so that no
# job process outlives the slurmd that started it.
cancel_jobs() {
    local ids deadline
    ids=$(SLURM_CONF=$CONF squeue -h -o '%A' -t PD,R,CG,CF,S,RQ,RH,RF,SE 2>/dev/null | sort -u | tr '\n' ' ') || return 0
    [[ -n ${ids// /} ]] || return 0
    log "cancelling jobs: $ids"
    # shellcheck disable=SC2086  # one argument per job id
    SLURM_CONF=$CONF scancel $ids 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    while ((SECONDS < deadline)); do
        ids=$(SLURM_CONF=$CONF squeue -h -o '%A' -t R,CG,CF,S,SI 2>/dev/null) || return 0
        [[ -z $ids ]] && return 0
        sleep 0.2
    done
    log "warning: jobs still ending after ${TIMEOUT}s: $(echo "$ids" | tr '\n' ' ')"
}

cmd_stop() {
    set_paths
    if [[ ! -f $CONF ]]; then
        log "no cluster in $DIR (no $CONF); nothing to stop"
        return 0
    fi
    if live_pid "$CTLD_PID" slurmctld "$CONF" >/dev/null; then cancel_jobs; fi
    # All at once: with no job left, none of them needs another while shutting down.
    local daemons=() node
    for node in $(configured_nodes); do
        daemons+=("$DIR/run/slurmd-$node.pid" slurmd "$CONF")
    done
    stop_daemons "${daemons[@]}" "$CTLD_PID" slurmctld "$CONF" "$MUNGE_PID" munged "$SOCKET"
    log "cluster in $DIR stopped (state, logs and jobcomp.log kept; rm -rf $DIR to forget them)"
}

# --- status --------------------------------------------------------------------------------

cmd_status() {
    set_paths
    if [[ ! -f $CONF ]]; then
        echo "no cluster in $DIR"
        return 3
    fi
    local up=0 total=0 node pid
    report() {
        total=$((total + 1))
        if pid=$(live_pid "$1" "$2" "$3"); then
            up=$((up + 1))
            echo "$4: running (pid $pid)"
        else
            echo "$4: stopped"
        fi
    }
    report "$MUNGE_PID" munged "$SOCKET" munged
    report "$CTLD_PID" slurmctld "$CONF" slurmctld
    for node in $(configured_nodes); do
        report "$DIR/run/slurmd-$node.pid" slurmd "$CONF" "slurmd $node"
    done
    if live_pid "$CTLD_PID" slurmctld "$CONF" >/dev/null; then
        SLURM_CONF=$CONF sinfo -N -o '%N %P %t %c %m %G' || true
        SLURM_CONF=$CONF squeue || true
    fi
    echo "config: $CONF; logs: $LOGS; use: source $DIR/env.sh"
    ((up == total)) && return 0
    ((up == 0)) && return 3
    return 1
}

# --- arguments -----------------------------------------------------------------------------

main() {
    local cmd=${1:-}
    [[ -n $cmd ]] || {
        usage >&2
        exit 2
    }
    shift
    while (($#)); do
        case $1 in
        --dir) DIR=${2:?--dir needs a value}; shift ;;
        --dir=*) DIR=${1#*=} ;;
        --nodes) NODES=${2:?--nodes needs a value}; shift ;;
        --nodes=*) NODES=${1#*=} ;;
        --gpus) GPUS=${2:?--gpus needs a value}; shift ;;
        --gpus=*) GPUS=${1#*=} ;;
        --port) PORT=${2:?--port needs a value}; shift ;;
        --port=*) PORT=${1#*=} ;;
        --partition) PARTITION=${2:?--partition needs a value}; shift ;;
        --partition=*) PARTITION=${1#*=} ;;
        --timeout) TIMEOUT=${2:?--timeout needs a value}; shift ;;
        --timeout=*) TIMEOUT=${1#*=} ;;
        --install) INSTALL=yes ;;
        --no-install) INSTALL=no ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see $0 --help)" ;;
        esac
        shift
    done
    [[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$NODES'"
    [[ $GPUS =~ ^[0-9]+$ ]] || die "--gpus must be a non-negative integer, got '$GPUS'"
    if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1024 || PORT + NODES > 65535)); then
        die "--port must be a port number in 1024..$((65535 - NODES)), got '$PORT'"
    fi
    [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number of seconds, got '$TIMEOUT'"
    [[ $PARTITION =~ ^[A-Za-z0-9_-]+$ ]] || die "--partition must be a plain name, got '$PARTITION'"
    case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *) die "unknown command '$cmd' (start, stop or status)" ;;
    esac
}

main "$@"
