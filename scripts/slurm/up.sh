#!/usr/bin/env bash
# make slurm-up: start a single-node SLURM cluster on this machine (munged, MariaDB, slurmdbd, slurmctld, slurmd),
# to try `LAUNCHER=slurm` / `hydra/launcher=slurm` sweeps locally. Idempotent: daemons already running are kept.
# State under runs/.slurm/ (see common.sh); `make slurm-down` stops it. Needs root and Debian's packages.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_root slurm-up
require_packages

# Fill a template's @KEY@ placeholders (sed, no envsubst: gettext is not always installed).
render() {
  local template=$1 out=$2 mode=$3 tmp
  tmp=$(mktemp "$out.XXXX")
  sed -e "s|@STATE@|$STATE|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" \
    -e "s|@MEM_MB@|$MEM_MB|g" -e "s|@MEM_PER_CPU@|$((MEM_MB / CPUS))|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
    -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" \
    -e "s|@DB_PASS@|$DB_PASS|g" "$template" >"$tmp"
  chmod "$mode" "$tmp"
  mv "$tmp" "$out"
}

# Wait until a command succeeds; on time-out show the daemon's log.
wait_for() {
  local what=$1 seconds=$2 log=$3
  shift 3
  for ((i = 0; i < seconds * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  [[ -f $log ]] && tail -n 20 "$log" >&2
  die "$what did not come up within ${seconds}s (log: $log)"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {  # start <daemon> <command...>: unless it already runs; the daemon writes its own PID file
  local name=$1
  shift
  if pid=$(running_pid "$name"); then
    say "$name already running (pid $pid)"
    return 0
  fi
  say "starting $name"
  "$@" >>"$STATE/log/$name.out" 2>&1  # what a daemon prints before it forks; its own log is $name.log
}

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mkdir -p "$STATE"/{etc,run,log,munge,spool/slurmctld,spool/slurmd}
chmod 700 "$STATE/munge"  # etc/ stays readable: every user's sbatch/squeue reads etc/slurm.conf
[[ -s $STATE/etc/db.pass ]] || (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$STATE/etc/db.pass")
DB_PASS=$(cat "$STATE/etc/db.pass")
before=$(cat "$STATE"/etc/*.conf "$STATE"/etc/my.cnf 2>/dev/null | md5sum || true)
render "$TEMPLATES/slurm.conf.in" "$STATE/etc/slurm.conf" 644
render "$TEMPLATES/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf" 600  # slurmdbd refuses a password others can read
render "$TEMPLATES/my.cnf.in" "$STATE/etc/my.cnf" 644
changed=0
[[ $before == $(cat "$STATE"/etc/*.conf "$STATE"/etc/my.cnf | md5sum) ]] || changed=1

declare -A PORT=([slurmctld]=$CTLD_PORT [slurmd]=$SLURMD_PORT [slurmdbd]=$DBD_PORT [mariadbd]=$DB_PORT)
running=0
for d in "${DAEMONS[@]}"; do
  if running_pid "$d" >/dev/null; then
    running=$((running + 1))
  elif [[ -n ${PORT[$d]:-} ]] && ! port_free "${PORT[$d]}"; then
    die "port ${PORT[$d]} ($d) is taken by another program: stop it, or pick other ports with SLURM_LOCAL_PORT=<n>"
  fi
done
if ((running == ${#DAEMONS[@]})); then
  say "already up ($STATE)"
  ((changed == 0)) || say "the configuration changed since it started: make slurm-down slurm-up applies it"
else
  [[ -s $STATE/munge/munge.key ]] || mungekey --create --keyfile="$STATE/munge/munge.key"
  chmod 600 "$STATE/munge/munge.key"
  # --force: munged as root, in a folder it does not own the way a system install would
  start munged munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/run/munge.socket" \
    --pid-file="${PIDFILE[munged]}" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
  wait_for munged 20 "$STATE/log/munged.log" munge -n -S "$STATE/run/munge.socket"

  if [[ ! -d $STATE/mariadb/mysql ]]; then
    say "initializing MariaDB in $STATE/mariadb"
    mariadb-install-db --defaults-file="$STATE/etc/my.cnf" --auth-root-authentication-method=socket \
      --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 || {
      tail -n 20 "$STATE/log/mariadb-install.log" >&2
      die "mariadb-install-db failed (log: $STATE/log/mariadb-install.log)"
    }
  fi
  if ! running_pid mariadbd >/dev/null; then  # it does not fork itself: detached here, it writes its PID file
    say "starting mariadbd"
    (setsid mariadbd --defaults-file="$STATE/etc/my.cnf" </dev/null >>"$STATE/log/mariadbd.out" 2>&1 &)
  fi
  wait_for MariaDB 60 "$STATE/log/mariadb.log" mariadb --defaults-file="$STATE/etc/my.cnf" -e 'SELECT 1'
  mariadb --defaults-file="$STATE/etc/my.cnf" <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

  start slurmdbd slurmdbd
  wait_for slurmdbd 60 "$STATE/log/slurmdbd.log" bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT"
  start slurmctld slurmctld
  wait_for slurmctld 60 "$STATE/log/slurmctld.log" scontrol ping
  start slurmd slurmd
fi

# Ready = the node takes jobs and sacct answers from the accounting database (what submitit polls).
node_ready() { sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'; }
wait_for "node $(hostname -s)" 60 "$STATE/log/slurmd.log" node_ready
wait_for "sacct (accounting)" 60 "$STATE/log/slurmdbd.log" bash -c 'sacct -n -X -S now-1minute 2>&1 >/dev/null | (! grep .)'
sinfo
say "up: cluster $CLUSTER, state and logs in $STATE"
say "to use it from a shell: export SLURM_CONF=$SLURM_CONF   (make sets it for its own commands)"
