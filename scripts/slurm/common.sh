# Shared by up.sh, down.sh and status.sh: where the single-node cluster keeps its state, and its ports.
# Everything lives under $SLURM_LOCAL_DIR (default: <repo>/runs/.slurm, git-ignored): configs, munge key,
# MariaDB data, spool, PID files and logs. Ports: $SLURM_LOCAL_PORT (slurmctld) and the three after it
# (slurmd, slurmdbd, MariaDB), default 6817-6820.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE=${SLURM_LOCAL_DIR:-$REPO/runs/.slurm}
[[ $STATE == /* ]] || STATE=$PWD/$STATE  # the daemons' configs need absolute paths
TEMPLATES="$REPO/scripts/slurm"
CLUSTER=para-local
CTLD_PORT=${SLURM_LOCAL_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))
DB_PORT=$((CTLD_PORT + 3))
export SLURM_CONF="$STATE/etc/slurm.conf"

APT_HINT="apt-get update && apt-get install -y slurm-wlm slurmdbd munge mariadb-server"
# daemon name → PID file (written by the daemon itself)
declare -A PIDFILE=(
  [munged]="$STATE/run/munged.pid"
  [mariadbd]="$STATE/run/mariadbd.pid"
  [slurmdbd]="$STATE/run/slurmdbd.pid"
  [slurmctld]="$STATE/run/slurmctld.pid"
  [slurmd]="$STATE/run/slurmd.pid"
)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stopped in reverse

say() { printf 'slurm-local: %s\n' "$*"; }
die() { printf 'slurm-local: error: %s\n' "$*" >&2; exit 1; }

# The PID of a running daemon, from its PID file, only if that process is still this daemon (PIDs get reused).
running_pid() {
  local name=$1 file=${PIDFILE[$1]} pid
  [[ -s $file ]] || return 1
  pid=$(tr -dc 0-9 <"$file")
  [[ -n $pid && -r /proc/$pid/comm ]] || return 1
  [[ $(cat "/proc/$pid/comm") == "$name"* ]] || return 1
  echo "$pid"
}

require_root() {
  [[ $(id -u) -eq 0 ]] || die "the local cluster runs its daemons as root (SlurmUser=root): run this as root, e.g. sudo make $1"
}

require_packages() {
  local missing=() cmd
  for cmd in munged mungekey mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sbatch sacct sacctmgr scontrol; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}; install the packages: $APT_HINT"
}
