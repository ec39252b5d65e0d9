"""Ensemble rules side by side on one experiment's test period: which way of choosing and weighing members pays?

Every rule is the production scorer (`run_score`, in-process, writing into a temporary folder), chosen on
validation / selection data only; the table shows what each gives on the test period (RankIC first, net Sharpe
at the scorer's default cost), and the daily RankIC difference against the single pick selection makes alone
(a static experiment: the trial ranked first by --select-by; a walk-forward one: each window's, stitched):

    top-K mean              seed_average off, top_k, method mean
    top-K ic_weighted       seed_average off, top_k, weights max(selection figure, 0)
    top-K stack             seed_average off, top_k, NNLS weights fitted on the selection split
    seed-avg top-K mean     seed_average on,  top_k, method mean
    seed-avg ic_weighted    seed_average on,  top_k, ic_weighted
    seed-avg stack          seed_average on,  top_k, stack
    greedy (seed-avg)       seed_average on,  greedy on the selection split, method mean

    .venv/bin/python bench/ensemble_rules.py --experiment runs/quickstart [--top-k 5] [--select-by select_rank_ic]
        [--corr-penalty 0.5] [--pool 12]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
from pathlib import Path

from crnn_ray.score import ScoreConfig, run_score

RULES = [("top-K mean", False, "top_k", "mean"), ("top-K ic_weighted", False, "top_k", "ic_weighted"),
         ("top-K stack", False, "top_k", "stack"), ("seed-avg top-K mean", True, "top_k", "mean"),
         ("seed-avg ic_weighted", True, "top_k", "ic_weighted"), ("seed-avg stack", True, "top_k", "stack"),
         ("greedy (seed-avg)", True, "greedy", "mean")]


def _f(v, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--select-by", default="select_rank_ic")
    ap.add_argument("--corr-penalty", type=float, default=0.5)
    ap.add_argument("--pool", type=int, default=12)
    ap.add_argument("--verbose", action="store_true", help="show the scorer's own output")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ensemble_rules_") as tmp:
        for i, (rule, seed_average, selection, method) in enumerate(RULES):
            opts = ScoreConfig(experiment=Path(args.experiment), out=Path(tmp) / str(i), top_k=args.top_k,
                                select_by=args.select_by, method=method, seed_average=seed_average,
                                selection=selection, path="in_process", corr_penalty=args.corr_penalty,
                               pool=args.pool)
            buf = io.StringIO()
            with contextlib.redirect_stdout(sys.stdout if args.verbose else buf):
                m = run_score(opts)
            if "ensemble" not in m:
                print(f"{rule}: no labels on the test period")
                continue
            s, vs = m["ensemble"]["summary"], m.get("vs_selected_member") or {}
            rows.append((rule, f"{len(m['units'])}u/{len(m['weights'])}t", s["rank_ic"], s["ic"], s.get("sharpe_net"),
                         s["rank_ic_tstat_hac"], vs.get("rank_ic_diff"), vs.get("rank_ic_diff_tstat_hac")))
            sel = vs.get("member", "?")
    print(f"experiment {args.experiment}: test {m['period']['start']}..{m['period']['end']} "
          f"({m['ensemble']['summary']['n_days']} days), chosen by {args.select_by}, top-K {args.top_k}; "
          f"single pick (alone) {sel} RankIC {_f(vs.get('rank_ic_member'), '{:+.4f}')}")
    print(f"{'rule':<22}{'members':>10}{'RankIC':>10}{'IC':>10}{'net SR':>9}{'RankIC t':>10}"
          f"{'vs pick dRankIC':>16}{'HAC t':>8}")
    for rule, n, ric, ic, sh, t, d, dt in rows:
        print(f"{rule:<22}{n:>10}{_f(ric, '{:+.4f}'):>10}{_f(ic, '{:+.4f}'):>10}{_f(sh, '{:+.2f}'):>9}"
              f"{_f(t, '{:+.2f}'):>10}{_f(d, '{:+.4f}'):>16}{_f(dt, '{:+.2f}'):>8}")
    print("members: units/trials; net SR: realised long-short Sharpe net of the scorer's default cost "
          "(docs/metrics.md); RankIC t and the difference's t: Newey-West with hac_lags(n, horizon) lags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
