#!/usr/bin/env bash
# N JAX processes on this machine, one coordinator on localhost, CPU devices, gloo
# collectives: the multi-host code path (global mesh, per-process data shards,
# process-0 metrics, multi-process Orbax checkpoints) without a cluster.
#
#   bash launch/local_multiprocess.sh --num_processes 2 --devices_per_process 2 -- \
#       --config configs/tiny.py --workdir /tmp/tiny_2proc
#
# Everything after `--` goes to `python -m alphadecay_jax.train` unchanged (so
# --config.* overrides work). Output lines are prefixed with [pK]. If any process
# fails, the others are stopped and the script exits with that status; SIGINT/SIGTERM
# are forwarded so every process checkpoints before exiting. Re-running resumes.
#
# Options:
#   --num_processes N        processes to start (required, >= 1)
#   --devices_per_process D  simulated CPU devices per process (default 1)
#   --port P                 coordinator port on 127.0.0.1 (default: a free port)
#   --python PATH            interpreter (default: $PYTHON or python3)
#   --dry-run                print the commands and exit
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "local_multiprocess.sh: $*" >&2; echo "(run with --help for usage)" >&2; exit 2; }

num_processes="" devices=1 port="" python="${PYTHON:-python3}" dry_run=0
while (($#)); do
  case "$1" in
    --num_processes) num_processes="${2:-}"; shift 2 || die "--num_processes needs a value" ;;
    --devices_per_process) devices="${2:-}"; shift 2 || die "--devices_per_process needs a value" ;;
    --port) port="${2:-}"; shift 2 || die "--port needs a value" ;;
    --python) python="${2:-}"; shift 2 || die "--python needs a value" ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (trainer flags go after --)" ;;
  esac
done
train_args=("$@")

[[ "$num_processes" =~ ^[1-9][0-9]*$ ]] || die "--num_processes must be a positive integer (got '${num_processes}')"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || die "--devices_per_process must be a positive integer (got '${devices}')"
has_flag() { local f; for f in "${train_args[@]}"; do [[ "$f" == "$1" || "$f" == "$1="* ]] && return 0; done; return 1; }
has_flag --config || die "missing trainer flag --config (after --)"
has_flag --workdir || die "missing trainer flag --workdir (after --)"
command -v "$python" >/dev/null || die "interpreter '$python' not found (set --python or PYTHON)"
if [[ -z "$port" ]]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number (got '$port')"

cd "$(dirname "$0")/.."
echo "local_multiprocess.sh: $num_processes process(es) x $devices CPU device(s), coordinator 127.0.0.1:$port, in $(pwd)"
commands=()
for ((i = 0; i < num_processes; i++)); do
  commands+=("JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$devices JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$num_processes JAX_PROCESS_ID=$i $python -m alphadecay_jax.train $(printf '%q ' "${train_args[@]}")")
  echo "  [p$i] ${commands[$i]}"
done
((dry_run)) && exit 0

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'echo "local_multiprocess.sh: forwarding SIGTERM to ${pids[*]}" >&2; stop_all' INT TERM

for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$num_processes" \
  JAX_PROCESS_ID="$i" \
    "$python" -m alphadecay_jax.train "${train_args[@]}" \
    > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  pids+=("$!")
done

status=0
for ((n = 0; n < num_processes; n++)); do
  finished=""
  if wait -n -p finished "${pids[@]}"; then rc=0; else rc=$?; fi
  # wait -n is interrupted by a trapped signal (no pid): keep waiting for the children.
  if [[ -z "$finished" ]]; then n=$((n - 1)); continue; fi
  remaining=()
  for pid in "${pids[@]}"; do [[ "$pid" == "$finished" ]] || remaining+=("$pid"); done
  pids=("${remaining[@]}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "local_multiprocess.sh: process $finished exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
wait  # the log prefixers
exit "$status"
