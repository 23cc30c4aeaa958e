#!/usr/bin/env bash
# The operator as a background process beside the local cluster (for the demo and for trying things by hand).
#
# Usage: hack/local-operator.sh start|stop|status
# Needs `python` with the project on its path (the Makefile's venv and PYTHONPATH). The operator belongs to
# the dev cluster it runs against: its log is <state>/logs/operator.log and its pid <state>/pids/operator.pid,
# where <state> is the dev cluster's state folder ($MAAS_DEV_CLUSTER_DIR or the default). `stop` must run
# before `maas dev-cluster down`, which deletes that folder (`make cluster-down` does both).
set -euo pipefail

state_dir=$(python -c 'from maas_devcluster.control_plane import default_state_dir; print(default_state_dir())')
pid_file="$state_dir/pids/operator.pid"
log_file="$state_dir/logs/operator.log"
ports_file="$state_dir/operator.ports"

# The recorded pid, if it still is our operator (a reused pid runs something else).
running_pid() {
  [[ -f "$pid_file" ]] || return 1
  local pid
  pid=$(<"$pid_file")
  [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- '-m maas_operator' \
    && echo "$pid"
}

free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  start)
    if pid=$(running_pid); then
      echo "[operator] already running (pid $pid; log $log_file)" >&2
      exit 0
    fi
    [[ -f "$state_dir/kubeconfig" ]] || { echo "[operator] no dev cluster in $state_dir (make cluster-up)" >&2; exit 1; }
    # With a real node (`up --real-node`), workers run there: its runtime image and worker pod patch.
    eval "$(python -m maas_devcluster --state-dir "$state_dir" operator-env)"
    # Free ports rather than the defaults (8000, 8080): the machine may run other things on those.
    metrics_port=$(free_port)
    liveness_port=$(free_port)
    KUBECONFIG="$state_dir/kubeconfig" MAAS_METRICS_PORT=$metrics_port PYTHONUNBUFFERED=1 \
      nohup python -m maas_operator --liveness "http://127.0.0.1:$liveness_port/healthz" \
      >"$log_file" 2>&1 </dev/null &
    echo $! >"$pid_file"
    printf 'metrics=%s\nliveness=%s\n' "$metrics_port" "$liveness_port" >"$ports_file"
    # Up once its liveness endpoint answers (it has listed the cluster and started its reconcile workers).
    for _ in $(seq 1 120); do
      if python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$liveness_port/healthz', timeout=2)" \
        2>/dev/null; then
        echo "[operator] running (pid $(<"$pid_file")); log $log_file;" \
          "metrics http://127.0.0.1:$metrics_port/metrics" >&2
        exit 0
      fi
      if ! running_pid >/dev/null; then
        echo "[operator] exited while starting; last lines of $log_file:" >&2
        tail -n 20 "$log_file" >&2
        exit 1
      fi
      sleep 0.5
    done
    echo "[operator] not live after 60 s; see $log_file" >&2
    exit 1
    ;;
  stop)
    if ! pid=$(running_pid); then
      echo "[operator] not running" >&2
      rm -f "$pid_file"
      exit 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 40); do
      running_pid >/dev/null || break
      sleep 0.25
    done
    if running_pid >/dev/null; then
      echo "[operator] still running after 10 s; SIGKILL" >&2
      kill -KILL "$pid"
    fi
    rm -f "$pid_file" "$ports_file"
    echo "[operator] stopped (pid $pid)" >&2
    ;;
  status)
    if pid=$(running_pid); then
      echo "operator: running (pid $pid; log $log_file; $(tr '\n' ' ' <"$ports_file"))"
    else
      echo "operator: not running"
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
