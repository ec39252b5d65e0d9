#!/usr/bin/env bash
# Score the latest date with a finished sweep's ensemble, as a Ray job on the cluster at RAY_ADDRESS
# (docs/operations.md, "Daily scoring"). Run it after the day's data has landed (e.g. from cron):
# it adds one partition, $CRNN_SIGNALS/NAME/signals/date=YYYY-MM-DD/, and never touches other days.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: jobs/score_daily.sh NAME [DATE]
  NAME   experiment (a finished sweep) under $CRNN_STORAGE
  DATE   YYYY-MM-DD to score (default: the last date of the panel, read on the cluster)
environment:
  RAY_ADDRESS     job server of the cluster (required), e.g. http://127.0.0.1:8265 through the tunnel
  CRNN_STORAGE    experiments directory on shared storage (default /mnt/crnn/runs)
  CRNN_SIGNALS    signals root on shared storage (default /mnt/crnn/signals); output: $CRNN_SIGNALS/NAME
  CRNN_DATA       today's panel on shared storage (parquet/csv with the same features); default: the
                  experiment's own panel ($CRNN_STORAGE/NAME/data/panel.parquet)
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

[[ $# -ge 1 && $# -le 2 ]] || usage
name=$1
day=${2:-}
[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "NAME '$name': use letters, digits, '.', '_' or '-'"
if [[ -n $day ]]; then
  [[ $day =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] && date -u -d "$day" +%F >/dev/null 2>&1 \
    || die "DATE '$day': not a date, use YYYY-MM-DD"
fi

[[ -n ${RAY_ADDRESS:-} ]] || die "RAY_ADDRESS is not set (the job server, e.g. http://127.0.0.1:8265)"
storage=${CRNN_STORAGE:-/mnt/crnn/runs}
signals=${CRNN_SIGNALS:-/mnt/crnn/signals}
data=${CRNN_DATA:-}
for var in storage signals data; do
  value=${!var}
  [[ -z $value || $value == /* ]] || die "CRNN_${var^^} '$value': must be an absolute path on shared storage"
done

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
  token_file=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  [[ -s $token_file ]] \
    || die "no Ray auth token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a token file (missing: $token_file)"
fi

ray_cli=${RAY_CLI:-ray}
command -v "$ray_cli" >/dev/null || die "'$ray_cli' not found: activate the environment that has Ray 2.60"

# Runs on the cluster, where the panel is: find the latest date when none was given, then score that one
# date (--start = --end) into the shared signals directory.
remote='set -eu
exp=$1; out=$2; data=$3; day=$4
if [ -z "$day" ]; then
  panel=${data:-$exp/data/panel.parquet}
  day=$(python - "$panel" <<PY
import sys
import pandas as pd
path = sys.argv[1]
if path.endswith(".csv"):
    dates = pd.read_csv(path, usecols=["date"])["date"]
else:
    dates = pd.read_parquet(path, columns=["date"])["date"]
print(pd.to_datetime(dates).max().strftime("%Y-%m-%d"))
PY
)
  echo "latest date in $panel: $day"
fi
if [ -n "$data" ]; then
  exec python -m crnn_ray.score --experiment "$exp" --out "$out" --data "$data" --start "$day" --end "$day"
fi
exec python -m crnn_ray.score --experiment "$exp" --out "$out" --start "$day" --end "$day"'

entrypoint=(sh -c "$remote" score_daily "$storage/$name" "$signals/$name" "$data" "$day")

wait_flag=()
[[ ${CRNN_NO_WAIT:-0} == 1 ]] && wait_flag=(--no-wait)
submission_id="crnn-score-${name}-${day:-latest}-$(date -u +%Y%m%dT%H%M%SZ)"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"
echo "submitting $submission_id: $storage/$name, ${day:-latest date} -> $signals/$name on $RAY_ADDRESS" >&2
exec "$ray_cli" job submit --address "$RAY_ADDRESS" --submission-id "$submission_id" \
  --working-dir . --runtime-env jobs/runtime_env.yaml "${wait_flag[@]}" -- "${entrypoint[@]}"
