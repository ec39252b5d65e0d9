"""`python -m crnn_ray.zoo list | show | check`: browse the zoo and prove every entry builds and trains.

list   -- one row per entry (id, params at the quickstart sizes, the report's IC/pnl, spec); --json for tools
show   -- one model's module tree and parameter count
check  -- build, forward + backward on a random batch; non-zero exit if any output or gradient is not finite
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from crnn_ray import defaults
from crnn_ray.io import ArgumentParser, CliError, cli_main
from crnn_ray.zoo.registry import build_model, count_params, load_zoo, resolve_variants
from crnn_ray.zoo.spec import FAMILIES, family_of


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m crnn_ray.zoo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list the zoo")
    ls.add_argument("--family", choices=list(FAMILIES))
    ls.add_argument("--json", action="store_true", help="print a JSON list of entries")
    ls.add_argument("--lookback", type=int, default=defaults.LOOKBACK)
    ls.add_argument("--features", type=int, default=defaults.N_FEATURES)
    show = sub.add_parser("show", help="module tree and parameter count of one model")
    show.add_argument("model", help="zoo id or spec string")
    show.add_argument("--lookback", type=int, default=defaults.LOOKBACK)
    show.add_argument("--features", type=int, default=defaults.N_FEATURES)
    check = sub.add_parser("check", help="build + forward/backward each model on a random batch")
    check.add_argument("models", nargs="*", help="zoo ids, globs or spec strings (default: the whole zoo)")
    check.add_argument("--lookback", type=int, default=defaults.LOOKBACK)
    check.add_argument("--features", type=int, default=defaults.N_FEATURES)
    check.add_argument("--batch", type=int, default=8)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--threads", type=int, default=1,
                       help="torch threads (default 1: small recurrent nets only lose time to more)")
    return p


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise CliError(f"--{name} must be >= 1, got {value}")


def cmd_list(args) -> int:
    _positive("lookback", args.lookback)
    _positive("features", args.features)
    rows = []
    for entry in load_zoo().values():
        if args.family and entry.family != args.family:
            continue
        params = count_params(build_model(entry.spec, args.features, args.lookback))
        rows.append({"id": entry.id, "family": entry.family, "spec": entry.spec, "params": params,
                     "seed_ic": entry.seed_ic, "seed_pnl": entry.seed_pnl, "note": entry.note})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':<14} {'params':>8} {'seed_ic':>7} {'seed_pnl':>8}  spec")
    for r in rows:
        ic = "" if r["seed_ic"] is None else f"{r['seed_ic']:.3f}"
        pnl = "" if r["seed_pnl"] is None else f"{r['seed_pnl']:.3f}"
        print(f"{r['id']:<14} {r['params']:>8} {ic:>7} {pnl:>8}  {r['spec']}")
    print(f"{len(rows)} models (params at lookback {args.lookback}, {args.features} features)")
    return 0


def cmd_show(args) -> int:
    _positive("lookback", args.lookback)
    _positive("features", args.features)
    variants = resolve_variants([args.model])
    if len(variants) != 1:
        raise CliError(f"show takes one model; {args.model!r} matches {len(variants)}")
    [(variant_id, spec)] = variants
    model = build_model(spec, args.features, args.lookback)
    print(f"{variant_id}: {spec}")
    print(f"family {family_of(spec)}, lookback {args.lookback}, features {args.features}")
    print(model)
    print(f"params: {count_params(model)}")
    return 0


def cmd_check(args) -> int:
    for name in ("lookback", "features", "batch", "threads"):
        _positive(name, getattr(args, name))
    torch.set_num_threads(args.threads)
    if args.batch < 2:
        raise CliError("--batch must be >= 2 (batchnorm needs more than one sample)")
    variants = resolve_variants(args.models or ["*"])
    failures = 0
    for variant_id, spec in variants:
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        try:
            model = build_model(spec, args.features, args.lookback)
            model.train()
            x = torch.randn(args.batch, args.lookback, args.features)
            y = model(x)
            problem = None
            if tuple(y.shape) != (args.batch,):
                problem = f"output shape {tuple(y.shape)}, expected ({args.batch},)"
            elif not torch.isfinite(y).all():
                problem = "non-finite output"
            else:
                (y - torch.randn_like(y)).pow(2).mean().backward()
                bad = [n for n, p in model.named_parameters()
                       if p.grad is None or not torch.isfinite(p.grad).all()]
                if bad:
                    problem = f"missing or non-finite gradient for {bad[0]}"
        except CliError as exc:
            problem = str(exc)
        ms = (time.perf_counter() - start) * 1000
        if problem:
            failures += 1
            print(f"FAIL {variant_id}: {problem}")
        else:
            print(f"ok   {variant_id:<14} params {count_params(model):>8}  fwd+bwd {ms:7.1f} ms  "
                  f"(batch {args.batch}, lookback {args.lookback}, features {args.features})")
    print(f"{len(variants) - failures}/{len(variants)} models ok")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"list": cmd_list, "show": cmd_show, "check": cmd_check}[args.command](args)


main = cli_main(main)

if __name__ == "__main__":
    sys.exit(main())
