#!/usr/bin/env bash
# make slurm-down: stop the local cluster that `make slurm-up` started (only the daemons whose PID files it holds),
# slurmd first and munged last. Jobs still in the queue are lost with it. State and logs stay in runs/.slurm/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_root slurm-down
for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
  name=${DAEMONS[i]}
  if ! pid=$(running_pid "$name"); then
    rm -f "${PIDFILE[$name]}"
    continue
  fi
  say "stopping $name (pid $pid)"
  kill -TERM "$pid"
  for ((t = 0; t < 60; t++)); do
    [[ -d /proc/$pid ]] || break
    sleep 0.5
  done
  if [[ -d /proc/$pid ]]; then
    say "$name did not stop within 30 s: SIGKILL"
    kill -KILL "$pid"
  fi
  rm -f "${PIDFILE[$name]}"
done
say "down (state and logs kept in $STATE)"
