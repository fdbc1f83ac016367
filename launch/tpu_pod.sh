#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, install this repository on every worker,
# start the same command on all workers, stream logs, stop, delete.
#
#   bash launch/tpu_pod.sh [--dry-run] ACTION [settings] [-- TRAINER_FLAGS]
#
# ACTION
#   create    gcloud compute tpus tpu-vm create (needs --accelerator)
#   install   copy `git archive HEAD` of this repo to every worker, make ~/venv, pip
#             install -r requirements.txt -e .[tpu], install gcsfuse
#   run       mount the bucket on every worker (gcsfuse, ~/bucket), start
#             `python -m alphadecay_jax.train TRAINER_FLAGS --workdir ~/bucket/RUN`
#             in the background on all workers, then stream worker 0's log
#   logs      stream a worker's log (--worker N, default 0); Ctrl-C leaves the job running
#   stop      SIGTERM the trainer on all workers (it checkpoints, then exits)
#   delete    delete the TPU VM slice
#   up        create + install + run
# Settings (flag, or environment variable)
#   --project  / PROJECT            GCP project (required)
#   --zone     / ZONE               e.g. us-west4-a (required)
#   --name     / TPU_NAME           slice name (default alphadecay-tpu)
#   --accelerator / ACCELERATOR_TYPE  e.g. v5litepod-16, v5p-16, v6e-8 (create, up)
#   --version  / RUNTIME_VERSION    TPU VM image (default from the accelerator type)
#   --bucket   / BUCKET             gs://bucket for checkpoints + metrics (run, up)
#   --run_name / RUN_NAME           workdir under the bucket (default: the config's name);
#                                   running again with the same name resumes
#   --spot                          create a Spot slice
#   --worker N                      worker for `logs` (default 0)
# Every worker must see the same workdir, hence the bucket mounted with gcsfuse.
# JAX finds the other workers through the TPU metadata server (ALPHADECAY_DISTRIBUTED=auto).
#
#   bash launch/tpu_pod.sh --dry-run up --project my-proj --zone us-west4-a \
#       --accelerator v5litepod-16 --bucket gs://my-bucket -- --config configs/llama_1b.py \
#       --config.data.tfds_data_dir=gs://my-bucket/tfds \
#       --config.data.sentencepiece_model=/home/$USER/bucket/spm/t5.model
set -euo pipefail

usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "tpu_pod.sh: $*" >&2; echo "(bash launch/tpu_pod.sh --help for usage)" >&2; exit 2; }

dry_run=0 action="" spot=0 worker=0
project="${PROJECT:-}" zone="${ZONE:-}" name="${TPU_NAME:-alphadecay-tpu}"
accelerator="${ACCELERATOR_TYPE:-}" version="${RUNTIME_VERSION:-}" bucket="${BUCKET:-}"
run_name="${RUN_NAME:-}"
need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value"; }
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --project) need_value "$@"; project="$2"; shift 2 ;;
    --zone) need_value "$@"; zone="$2"; shift 2 ;;
    --name) need_value "$@"; name="$2"; shift 2 ;;
    --accelerator) need_value "$@"; accelerator="$2"; shift 2 ;;
    --version) need_value "$@"; version="$2"; shift 2 ;;
    --bucket) need_value "$@"; bucket="$2"; shift 2 ;;
    --run_name) need_value "$@"; run_name="$2"; shift 2 ;;
    --worker) need_value "$@"; worker="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    create|install|run|logs|stop|delete|up)
      [[ -z "$action" ]] || die "two actions given: '$action' and '$1'"; action="$1"; shift ;;
    *) die "unknown argument '$1' (trainer flags go after --)" ;;
  esac
done
train_args=("$@")
[[ -n "$action" ]] || die "no ACTION (create, install, run, logs, stop, delete or up)"

missing=()
[[ -n "$project" ]] || missing+=("--project/PROJECT")
[[ -n "$zone" ]] || missing+=("--zone/ZONE")
[[ -n "$name" ]] || missing+=("--name/TPU_NAME")
case "$action" in create|up) [[ -n "$accelerator" ]] || missing+=("--accelerator/ACCELERATOR_TYPE") ;; esac
case "$action" in run|up) [[ -n "$bucket" ]] || missing+=("--bucket/BUCKET") ;; esac
((${#missing[@]} == 0)) || die "'$action' needs: ${missing[*]}"
[[ "$worker" =~ ^[0-9]+$ ]] || die "--worker must be a worker number (got '$worker')"

if [[ "$action" == run || "$action" == up ]]; then
  has_config=0
  for f in "${train_args[@]}"; do
    [[ "$f" == --config || "$f" == --config=* ]] && has_config=1
    [[ "$f" == --workdir || "$f" == --workdir=* ]] && die "do not pass --workdir: it is ~/bucket/RUN_NAME on every worker (set --run_name)"
  done
  ((has_config)) || die "'$action' needs trainer flags after --, at least --config FILE"
  [[ "$bucket" == gs://* ]] || bucket="gs://$bucket"
  bucket_name="${bucket#gs://}"; bucket_name="${bucket_name%%/*}"
  [[ "$bucket" == "gs://$bucket_name" || "$bucket" == "gs://$bucket_name/" ]] \
    || die "--bucket must be a bucket (gs://NAME), not a path inside one; use --run_name for the folder"
  if [[ -z "$run_name" ]]; then
    for ((i = 0; i < ${#train_args[@]}; i++)); do
      case "${train_args[$i]}" in
        --config) run_name="$(basename "${train_args[$((i + 1))]:-run}" .py)" ;;
        --config=*) run_name="$(basename "${train_args[$i]#--config=}" .py)" ;;
      esac
    done
  fi
fi

if [[ -z "$version" && -n "$accelerator" ]]; then
  case "$accelerator" in
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    v4-*) version="tpu-ubuntu2204-base" ;;
    *) die "no default --version for accelerator '$accelerator'; pass --version" ;;
  esac
fi

gc=(gcloud compute tpus tpu-vm)
where=(--project="$project" --zone="$zone")
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${TMPDIR:-/tmp}/alphadecay_jax-$name.tar.gz"
log_file='~/alphadecay_train.log'
pid_file='~/alphadecay_train.pid'

q() {  # shell-quotes each argument (single quotes where needed), joined by spaces
  local out=() a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then out+=("$a")
    else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
step() {  # prints the exact command (copy-pasteable), then runs it unless --dry-run
  echo "+ $(q "$@")"
  ((dry_run)) || "$@"
}
on_workers() {  # on_workers WORKER REMOTE_SCRIPT
  step "${gc[@]}" ssh "$name" "${where[@]}" --worker="$1" --command="$2"
}

do_create() {
  local extra=()
  ((spot)) && extra+=(--spot)
  echo "# create TPU VM slice $name ($accelerator, image $version) in $project/$zone"
  step "${gc[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" \
    --version="$version" "${extra[@]}"
}

do_install() {
  echo "# copy $(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo HEAD) of $repo_root to every worker and install it"
  step git -C "$repo_root" archive --format=tar.gz --prefix=alphadecay_jax/ -o "$tarball" HEAD
  step "${gc[@]}" scp "$tarball" "$name:~/alphadecay_jax.tar.gz" "${where[@]}" --worker=all
  on_workers all 'set -e; rm -rf ~/alphadecay_jax && tar xzf ~/alphadecay_jax.tar.gz -C ~ && cd ~/alphadecay_jax && python3 -m venv ~/venv && ~/venv/bin/pip install -q -r requirements.txt -e ".[tpu]" && if ! command -v gcsfuse >/dev/null; then echo "deb https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc >/dev/null && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi'
}

do_run() {
  echo "# start the trainer on every worker of $name; workdir $bucket/$run_name (~/bucket/$run_name)"
  local cmd
  cmd="set -e; mkdir -p ~/bucket; mountpoint -q ~/bucket || gcsfuse --implicit-dirs $(q "$bucket_name") ~/bucket; cd ~/alphadecay_jax; ALPHADECAY_DISTRIBUTED=auto setsid nohup ~/venv/bin/python -m alphadecay_jax.train $(q "${train_args[@]}") --workdir ~/bucket/$(q "$run_name") > $log_file 2>&1 < /dev/null & echo \$! > $pid_file; echo \"worker \$(hostname): started pid \$(cat $pid_file)\""
  on_workers all "$cmd"
  do_logs
}

do_logs() {
  echo "# stream worker $worker's log (Ctrl-C stops streaming, not the job)"
  on_workers "$worker" "tail -n +1 -F $log_file"
}

do_stop() {
  echo "# SIGTERM the trainer on every worker: it saves a checkpoint and exits"
  on_workers all "if [ -f $pid_file ]; then kill -TERM \$(cat $pid_file) 2>/dev/null && echo \"worker \$(hostname): stopping\" || echo \"worker \$(hostname): not running\"; fi"
}

do_delete() {
  echo "# delete TPU VM slice $name in $project/$zone"
  step "${gc[@]}" delete "$name" "${where[@]}" --quiet
}

echo "tpu_pod.sh: $action on TPU slice '$name' (project $project, zone $zone${accelerator:+, $accelerator})$( ((dry_run)) && echo ' -- dry run, nothing is executed')"
if ((!dry_run)) && ! command -v gcloud >/dev/null; then
  die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
fi
case "$action" in
  create) do_create ;;
  install) do_install ;;
  run) do_run ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
  up) do_create; do_install; do_run ;;
esac
