#!/usr/bin/env bash
# Submit a crnn_ray sweep to the Ray cluster at RAY_ADDRESS as a Ray job (docs/operations.md, "Submit").
# The repository is uploaded as the job's working directory (jobs/runtime_env.yaml), so the cluster runs
# the code and config you have here; experiments land on storage every node mounts.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: jobs/submit_sweep.sh CONFIG NAME [SWEEP_ARGS...]
  CONFIG      sweep YAML inside this repository (it travels with the job), e.g. configs/sweeps/tiny.yaml
  NAME        experiment name (letters, digits, '.', '_', '-'): results go to $CRNN_STORAGE/NAME
  SWEEP_ARGS  passed on to `python -m crnn_ray.sweep`, e.g. --resume or --overwrite
environment:
  RAY_ADDRESS     job server of the cluster (required), e.g. http://127.0.0.1:8265 while
                  `ray dashboard cluster/aws-gpu.yaml` holds the SSH tunnel open
  CRNN_STORAGE    absolute experiments directory on storage mounted on every node (default /mnt/crnn/runs)
  RAY_AUTH_MODE   token (default) or disabled
  RAY_AUTH_TOKEN  the cluster's token; else the file RAY_AUTH_TOKEN_PATH; else ~/.ray/auth_token
  CRNN_NO_WAIT=1  return once submitted instead of following the job's logs
EOF
  exit 2
}

die() {
  echo "error: $*" >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
config=$1
name=$2
shift 2

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
[[ -f $config ]] || die "config $config: no such file"
config_abs=$(realpath -- "$config")
case $config_abs in
  "$root"/*) config_rel=${config_abs#"$root"/} ;;
  *) die "config $config: must be inside $root (the repository is what the job uploads)" ;;
esac
case $config_rel in
  .venv/* | runs/* | .git/*) die "config $config: $config_rel is excluded from the upload (jobs/runtime_env.yaml)" ;;
esac
[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "NAME '$name': use letters, digits, '.', '_' or '-'"

[[ -n ${RAY_ADDRESS:-} ]] || die "RAY_ADDRESS is not set (the job server, e.g. http://127.0.0.1:8265)"
storage=${CRNN_STORAGE:-/mnt/crnn/runs}
[[ $storage == /* ]] || die "CRNN_STORAGE '$storage': must be an absolute path on storage every node mounts"

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
  token_file=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  [[ -s $token_file ]] \
    || die "no Ray auth token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a token file (missing: $token_file)"
fi

ray_cli=${RAY_CLI:-ray}
command -v "$ray_cli" >/dev/null || die "'$ray_cli' not found: activate the environment that has Ray 2.60"

wait_flag=()
[[ ${CRNN_NO_WAIT:-0} == 1 ]] && wait_flag=(--no-wait)
submission_id="crnn-sweep-${name}-$(date -u +%Y%m%dT%H%M%SZ)"

entrypoint=(python -m crnn_ray.sweep --config "$config_rel" --storage "$storage" --name "$name" "$@")

cd "$root"
echo "submitting $submission_id: $config_rel -> $storage/$name on $RAY_ADDRESS" >&2
exec "$ray_cli" job submit --address "$RAY_ADDRESS" --submission-id "$submission_id" \
  --working-dir . --runtime-env jobs/runtime_env.yaml "${wait_flag[@]}" -- "${entrypoint[@]}"
