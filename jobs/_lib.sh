# Shell plumbing shared by the job scripts (jobs/submit_sweep.sh, jobs/score_daily.sh); sourced, not run.
# Every check exits 2 with a one-line `error:` on stderr, before anything is submitted.
# shellcheck shell=bash

# the repository root: the job's working directory (jobs/runtime_env.yaml `working_dir: .`, resolved from here)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

die() {
  echo "error: $*" >&2
  exit 2
}

check_name() {
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "NAME '$1': use letters, digits, '.', '_' or '-'"
}

# refuse_flags "what the script sets" ARGS...: the extra arguments may not set again what the script checked
# and set itself (argparse keeps the last of a repeated flag, so a second --name would win unchecked)
refuse_flags() {
  local set_by_script=$1
  shift
  local arg flag
  for arg in "$@"; do
    for flag in $set_by_script; do
      [[ $arg == "$flag" || $arg == "$flag="* ]] \
        && die "$arg: the script sets $flag itself (${set_by_script// /, }); pass it as its own argument or variable"
    done
  done
  return 0
}

require_ray_address() {
  [[ -n ${RAY_ADDRESS:-} ]] || die "RAY_ADDRESS is not set (the job server, e.g. http://127.0.0.1:8265)"
}

# RAY_AUTH_MODE defaults to token; then a token must be found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray).
require_auth_token() {
  export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
  if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
    local token_file=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
    [[ -s $token_file ]] \
      || die "no Ray auth token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a token file (missing: $token_file)"
  fi
}

# sets ray_cli: $RAY_CLI (tests use `echo`) or `ray`
find_ray_cli() {
  ray_cli=${RAY_CLI:-ray}
  command -v "$ray_cli" >/dev/null || die "'$ray_cli' not found: activate the environment that has Ray 2.60"
}

# submit_job SUBMISSION_ID ENTRYPOINT...: replaces the shell with `ray job submit` from the repository root,
# following the job's logs unless CRNN_NO_WAIT=1. The working directory is set once, in jobs/runtime_env.yaml
# (with its excludes): a --working-dir flag as well would make Ray warn "Overriding runtime_env working_dir".
submit_job() {
  local submission_id=$1
  shift
  local wait_flag=()
  if [[ ${CRNN_NO_WAIT:-0} == 1 ]]; then
    wait_flag=(--no-wait)
  fi
  cd "$root"
  exec "$ray_cli" job submit --address "$RAY_ADDRESS" --submission-id "$submission_id" \
    --runtime-env jobs/runtime_env.yaml "${wait_flag[@]}" -- "$@"
}
