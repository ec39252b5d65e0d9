#!/usr/bin/env bash
# Score the latest date with a finished sweep's ensemble, as a Ray job on the cluster at RAY_ADDRESS
# (docs/operations.md, "Daily scoring"). Run it after the day's data has landed (e.g. from cron):
# it adds one partition, $CRNN_SIGNALS/NAME/signals/date=YYYY-MM-DD/, and never touches other days.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

usage() {
  cat >&2 <<'EOF'
usage: jobs/score_daily.sh NAME [DATE]
  NAME   experiment (a finished sweep) under $CRNN_STORAGE
  DATE   YYYY-MM-DD to score (default: the last date of the panel, read on the cluster: `--latest`)
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

[[ $# -ge 1 && $# -le 2 ]] || usage
name=$1
day=${2:-}
check_name "$name"
if [[ -n $day ]]; then
  [[ $day =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] && date -u -d "$day" +%F >/dev/null 2>&1 \
    || die "DATE '$day': not a date, use YYYY-MM-DD"
fi

require_ray_address
storage=${CRNN_STORAGE:-/mnt/crnn/runs}
signals=${CRNN_SIGNALS:-/mnt/crnn/signals}
data=${CRNN_DATA:-}
for var in storage signals data; do
  value=${!var}
  [[ -z $value || $value == /* ]] || die "CRNN_${var^^} '$value': must be an absolute path on shared storage"
done
require_auth_token
find_ray_cli

# One date (--start = --end = DATE, or --latest: the panel's last date, found by the scorer on the cluster,
# where the panel is) into the shared signals directory.
entrypoint=(python -m crnn_ray.score --experiment "$storage/$name" --out "$signals/$name")
[[ -z $data ]] || entrypoint+=(--data "$data")
if [[ -n $day ]]; then
  entrypoint+=(--start "$day" --end "$day")
else
  entrypoint+=(--latest)
fi

submission_id="crnn-score-${name}-${day:-latest}-$(date -u +%Y%m%dT%H%M%SZ)"
echo "submitting $submission_id: $storage/$name, ${day:-latest date} -> $signals/$name on $RAY_ADDRESS" >&2
submit_job "$submission_id" "${entrypoint[@]}"
