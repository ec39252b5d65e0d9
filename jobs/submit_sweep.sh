#!/usr/bin/env bash
# Submit a crnn_ray sweep to the Ray cluster at RAY_ADDRESS as a Ray job (docs/operations.md, "Submit").
# The repository is uploaded as the job's working directory (jobs/runtime_env.yaml), so the cluster runs
# the code and config you have here; experiments land on storage every node mounts.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

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

[[ $# -ge 2 ]] || usage
config=$1
name=$2
shift 2

[[ -f $config ]] || die "config $config: no such file"
config_abs=$(realpath -- "$config")
case $config_abs in
  "$root"/*) config_rel=${config_abs#"$root"/} ;;
  *) die "config $config: must be inside $root (the repository is what the job uploads)" ;;
esac
case $config_rel in
  .venv/* | runs/* | .git/*) die "config $config: $config_rel is excluded from the upload (jobs/runtime_env.yaml)" ;;
esac
check_name "$name"
refuse_flags "--config --storage --name" "$@"

require_ray_address
storage=${CRNN_STORAGE:-/mnt/crnn/runs}
[[ $storage == /* ]] || die "CRNN_STORAGE '$storage': must be an absolute path on storage every node mounts"
require_auth_token
find_ray_cli

submission_id="crnn-sweep-${name}-$(date -u +%Y%m%dT%H%M%SZ)"
echo "submitting $submission_id: $config_rel -> $storage/$name on $RAY_ADDRESS" >&2
submit_job "$submission_id" python -m crnn_ray.sweep --config "$config_rel" --storage "$storage" --name "$name" "$@"
