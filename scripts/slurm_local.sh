#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying profiles/slurm without a real cluster.
#
#   sudo scripts/slurm_local.sh start    # install (apt) if needed, configure, start, wait until the node is idle
#   sudo scripts/slurm_local.sh status   # which daemons run; sinfo; exit 0 only if all run and the node takes jobs
#   sudo scripts/slurm_local.sh stop     # cancel every job, stop the daemons this script started
#
# What runs: munged, a private MariaDB (its own data directory and port, so a system MariaDB
# is left alone), slurmdbd, slurmctld and slurmd. slurmdbd is there because `sacct` (which
# reports each job's CPUs, memory and time limit, and which the Snakemake SLURM executor polls
# for job states) needs an accounting database: with accounting_storage/none it only answers
# "Slurm accounting storage is disabled", and `sacct -c` over jobcomp/filetxt lists no memory.
#
# Settings for containers and VMs without a systemd or a writable cgroup tree:
# proctrack/linuxproc (tracks a job's processes through /proc instead of cgroups),
# task/none (no CPU binding or memory fencing), jobacct_gather/linux (MaxRSS and CPU time from
# /proc). Nothing enforces a job's memory request here; a real cluster uses the cgroup plugins.
#
# Running `start` twice is safe: what is configured stays, what runs is left running. It
# writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf (the paths every SLURM command
# reads), and refuses to replace files there that it did not write.
#
# Environment: EDITHARM_SLURM_DIR (state, logs, database; default /var/lib/editharm-slurm),
# EDITHARM_SLURM_DB_PORT (the private MariaDB's port on 127.0.0.1; default 3307),
# EDITHARM_SLURM_NO_INSTALL=1 (fail instead of installing missing packages).
set -euo pipefail

STATE=${EDITHARM_SLURM_DIR:-/var/lib/editharm-slurm}
DB_PORT=${EDITHARM_SLURM_DB_PORT:-3307}
CONF_DIR=/etc/slurm
CLUSTER=editharm
PARTITION=main
MARKER="# Written by editharm scripts/slurm_local.sh; it replaces this file on its next start."
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
# One command per package that must be on PATH once the package is installed.
COMMANDS=(slurmctld slurmd sbatch sacct sacctmgr slurmdbd munged munge unmunge mariadbd mariadb-install-db mariadb)

say() { printf '[slurm_local] %s\n' "$*"; }
die() { printf '[slurm_local] ERROR: %s\n' "$*" >&2; exit 1; }
# Exit status 3: this machine cannot run the cluster (no root, nothing to install SLURM with),
# as opposed to 1, a step that should have worked and failed. tests/test_slurm.py skips on 3.
cannot() { printf '[slurm_local] CANNOT RUN HERE: %s\n' "$*" >&2; exit 3; }

usage() {
    echo "usage: $0 start|stop|status" >&2
    exit 2
}

require_root() {
    [[ $(id -u) -eq 0 ]] || cannot "must run as root (it installs packages, writes $CONF_DIR and starts daemons); rerun with sudo"
}

missing_commands() {
    local cmd missing=()
    for cmd in "${COMMANDS[@]}"; do
        PATH=$PATH:/usr/sbin:/sbin command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    echo "${missing[*]}"
}

install_packages() {
    local missing
    missing=$(missing_commands)
    if [[ -z $missing ]]; then
        say "packages present: ${PACKAGES[*]}"
        return
    fi
    [[ ${EDITHARM_SLURM_NO_INSTALL:-0} == 1 ]] && cannot "missing commands: $missing (install: apt-get install ${PACKAGES[*]})"
    command -v apt-get >/dev/null || cannot "missing commands: $missing, and no apt-get to install them; install ${PACKAGES[*]} (or your distribution's SLURM 22.05+, munge and MariaDB) by hand"
    say "missing commands: $missing; installing ${PACKAGES[*]} with apt-get"
    local t0=$SECONDS
    # policy-rc.d style "invoke-rc.d: ... denied" lines are expected in containers: the
    # packages' own services are not started, this script starts the daemons itself.
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || cannot "apt-get update failed (no network to the Debian mirror?)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$STATE/log/apt-get.log" 2>&1 \
        || cannot "apt-get install ${PACKAGES[*]} failed; see $STATE/log/apt-get.log"
    say "installed in $((SECONDS - t0)) s (log: $STATE/log/apt-get.log)"
    missing=$(missing_commands)
    [[ -z $missing ]] || die "still missing after apt-get install: $missing"
}

# A daemon counts as running when its pid file names a live process with the expected name.
running() {  # name pidfile
    local pid
    # The daemon may remove its pid file between a test and a read (while it exits): read once, quietly.
    pid=$(cat "$2" 2>/dev/null) || return 1
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(</proc/"$pid"/comm) == "$1"* ]] && ! grep -q '^State:.*Z' /proc/"$pid"/status
}

stop_pidfile() {  # name pidfile
    local pid i
    if ! running "$1" "$2"; then
        say "$1: not running"
        return
    fi
    pid=$(<"$2")
    say "$1: stopping (pid $pid)"
    kill "$pid"
    for i in $(seq 50); do
        running "$1" "$2" || { rm -f "$2"; return; }
        sleep 0.2
    done
    die "$1 (pid $pid) did not stop within 10 s"
}

wait_for() {  # description seconds command...
    local what=$1 limit=$2 i
    shift 2
    for ((i = 0; i < limit * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

CHANGED=0  # set to 1 by write_if_changed when it replaced a file

write_if_changed() {  # path mode owner content
    local path=$1 mode=$2 owner=$3 content=$4
    if [[ -f $path ]] && ! grep -qxF "$MARKER" "$path"; then
        die "$path exists and was not written by this script; move it away (a real cluster's configuration?) and rerun"
    fi
    if [[ -f $path && $(<"$path") == "$content" ]]; then
        return 0
    fi
    local tmp
    tmp=$(mktemp "$path.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
    say "wrote $path"
    CHANGED=1
}

# ---------------------------------------------------------------------------------- munge
start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged: running"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "munged: creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    say "munged: starting"
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/run/munged.ours"  # `stop` stops munged only when this script started it
    wait_for munged 10 bash -c 'munge -n | unmunge' || die "munged did not start; see /var/log/munge/munged.log"
}

stop_munge() {
    if [[ -f $STATE/run/munged.ours ]]; then
        stop_pidfile munged /run/munge/munged.pid
        rm -f "$STATE/run/munged.ours"
    else
        say "munged: left running (not started by this script)"
    fi
}

# ---------------------------------------------------------------------------------- MariaDB
# Everything of the private MariaDB lives in $STATE/mariadb, owned by its `mysql` user.
DB=$STATE/mariadb
db_client() { mariadb --no-defaults --socket="$DB/mariadbd.sock" -u root "$@"; }

start_db() {
    if running mariadbd "$DB/mariadbd.pid"; then
        say "mariadbd: running (port $DB_PORT)"
    else
        install -d -o mysql -g mysql -m 750 "$DB"
        if [[ ! -d $DB/data/mysql ]]; then
            say "mariadbd: initialising $DB/data"
            install -d -o mysql -g mysql -m 700 "$DB/data"
            mariadb-install-db --no-defaults --user=mysql --datadir="$DB/data" --skip-test-db \
                --auth-root-authentication-method=socket >"$STATE/log/mariadb-install-db.log" 2>&1 \
                || die "mariadb-install-db failed; see $STATE/log/mariadb-install-db.log"
        fi
        say "mariadbd: starting on 127.0.0.1:$DB_PORT"
        setsid mariadbd --no-defaults --user=mysql --datadir="$DB/data" --bind-address=127.0.0.1 \
            --port="$DB_PORT" --socket="$DB/mariadbd.sock" --pid-file="$DB/mariadbd.pid" \
            --log-error="$DB/mariadbd.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
        wait_for mariadbd 60 db_client -e 'select 1' \
            || die "mariadbd did not start; see $DB/mariadbd.log (port $DB_PORT taken? set EDITHARM_SLURM_DB_PORT)"
    fi
    # The password lives only in slurmdbd.conf (mode 600) and in the database.
    [[ -s $STATE/db.password ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/db.password")
    local password
    password=$(<"$STATE/db.password")
    db_client -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
                  ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
                  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
        || die "could not create the database user; see $DB/mariadbd.log"
}

# ---------------------------------------------------------------------------------- config
gpu_count() {
    # Only NVIDIA GPUs are detected (the device files SLURM's gres.conf names).
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

write_configs() {
    local host node gpus gres_line=""
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || die "this host's name '$host' does not resolve; add '127.0.0.1 $host' to /etc/hosts"
    # slurmd -C prints this machine's node line (CPUs, sockets, cores, threads, RealMemory).
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || die "slurmd -C did not describe this node: $node"
    gpus=$(gpu_count)
    if ((gpus > 0)); then
        gres_line="Gres=gpu:$gpus"
        local files
        files=$(seq -s, 0 $((gpus - 1)))
        write_if_changed "$CONF_DIR/gres.conf" 644 root:root "$MARKER
NodeName=$host Name=gpu File=/dev/nvidia[$files]"
        say "GPUs: $gpus (GRES gpu:$gpus)"
    else
        say "GPUs: none (no GRES)"
        if [[ -f $CONF_DIR/gres.conf ]] && grep -qxF "$MARKER" "$CONF_DIR/gres.conf"; then
            rm -f "$CONF_DIR/gres.conf"
        fi
    fi
    say "node: $node $gres_line"

    write_if_changed "$CONF_DIR/slurm.conf" 644 root:root "$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
# No cgroups: see the header of scripts/slurm_local.sh.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
# The Snakemake plugin names each job's rule and wildcards in its comment; store it, so that
# sacct -o Comment shows which rule a job ran.
AccountingStoreFlags=job_comment
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 5 minutes (SLURM's default).
MinJobAge=300
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
${node/NodeName=$(hostname)/NodeName=$host} $gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP"

    write_if_changed "$CONF_DIR/slurmdbd.conf" 600 slurm:slurm "$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$STATE/db.password")
StorageLoc=slurm_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log"
}

# ---------------------------------------------------------------------------------- SLURM
start_slurm() {
    local restart=$1 host
    host=$(hostname -s)
    if [[ $restart == 1 ]]; then
        say "configuration written: (re)starting the SLURM daemons"
        stop_pidfile slurmd "$STATE/run/slurmd.pid"
        stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
        stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
    fi
    if running slurmdbd "$STATE/run/slurmdbd.pid"; then
        say "slurmdbd: running"
    else
        say "slurmdbd: starting"
        slurmdbd
        wait_for slurmdbd 30 sacctmgr -n list cluster || die "slurmdbd does not answer; see $STATE/log/slurmdbd.log"
    fi
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        say "sacctmgr: registering cluster $CLUSTER"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if running slurmctld "$STATE/run/slurmctld.pid"; then
        say "slurmctld: running"
    else
        say "slurmctld: starting"
        slurmctld
    fi
    wait_for slurmctld 30 scontrol ping || die "slurmctld does not answer; see $STATE/log/slurmctld.log"
    if running slurmd "$STATE/run/slurmd.pid"; then
        say "slurmd: running"
    else
        say "slurmd: starting"
        slurmd
    fi
    # A node left drained or down by an earlier run (e.g. slurmd stopped with jobs on it) is
    # put back into service; one that never registers is an error.
    if ! wait_for node 30 bash -c "sinfo -h -n $host -o %t | grep -Eq '^(idle|mix|alloc)'"; then
        say "node $host is $(sinfo -h -n "$host" -o %t): resuming it"
        scontrol update nodename="$host" state=resume 2>/dev/null || true
        wait_for node 30 bash -c "sinfo -h -n $host -o %t | grep -Eq '^(idle|mix|alloc)'" \
            || die "node $host is $(sinfo -h -n "$host" -o '%t (%E)'); see $STATE/log/slurmd.log"
    fi
}

cmd_start() {
    require_root
    install -d -m 755 "$STATE" "$STATE/run" "$STATE/log"
    install_packages
    chown slurm:slurm "$STATE/log"
    install -d -o slurm -g slurm -m 755 "$STATE/slurmctld"
    install -d -m 755 "$STATE/slurmd"
    start_munge
    start_db
    write_configs
    start_slurm "$CHANGED"
    say "cluster '$CLUSTER' up: partition $PARTITION"
    sinfo -N -o '%N %P %t cpus=%c mem=%mMB gres=%G'
}

cmd_stop() {
    require_root
    if running slurmctld "$STATE/run/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %A | wc -l)
        if ((jobs > 0)); then
            say "cancelling $jobs job(s)"
            squeue -h -o %A | xargs scancel
        fi
    fi
    stop_pidfile slurmd "$STATE/run/slurmd.pid"
    stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
    stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
    stop_pidfile mariadbd "$DB/mariadbd.pid"
    stop_munge
    say "stopped (configuration, accounting database and logs kept in $STATE and $CONF_DIR)"
}

cmd_status() {
    local ok=0 name
    for name in mariadbd slurmdbd slurmctld slurmd; do
        local pidfile=$STATE/run/$name.pid
        [[ $name == mariadbd ]] && pidfile=$DB/mariadbd.pid
        if running "$name" "$pidfile"; then
            say "$name: running (pid $(<"$pidfile"))"
        else
            say "$name: not running"
            ok=1
        fi
    done
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then say "munged: running"; else say "munged: not running"; ok=1; fi
    if ((ok == 0)); then
        sinfo -N -o '%N %P %t cpus=%c mem=%mMB gres=%G'
        sinfo -h -n "$(hostname -s)" -o %t | grep -Eq '^(idle|mix|alloc)' || ok=1
    fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
