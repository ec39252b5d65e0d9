"""Stacked members: K models of one spec trained as ONE vmapped module in one process, each as train_one would.

Why: a zoo model's step is ~1,200-1,300 small kernels (the recurrent cells loop over the lookback), so on a GPU
one model is launch-bound and leaves the device mostly idle. Stacking K members runs every kernel once for all
K (torch.vmap over the members' parameters AND their own batches), so the launches per member-step fall ~K
times while the arithmetic stays the same.

Members share the spec and the lookback (the shapes); anything else may differ: seed, lr, weight_decay,
grad_clip, batch_size, loss, patience, epochs, the splits (one line across walk-forward windows). What stays
each member's own, exactly as train_one does it:

- init: build_model under torch.manual_seed(seed); the data order: _epoch_order(seed, epoch, run identity);
- AdamW: one flat parameter matrix [K, N] updated by AdamW's own arithmetic with per-member lr, weight decay
  and step count (AdamW is elementwise, so a row is that member's optimizer), and per-member gradient-norm
  clipping (the norm of the member's row);
- dropout: each member has its own torch.Generator, seeded seed*1000+epoch at each epoch as train_one seeds
  the global one, and its masks are drawn outside vmap in train_one's call order and shapes, then fed to the
  stacked module (on CPU, bit-equal to train_one's masks; on CUDA a per-member stream of its own);
- BatchNorm: the running stats are stacked buffers [K, C] passed to torch.func.functional_call under vmap;
  BatchNorm's in-place running-stat update then writes each member's row (a batched in-place update is
  allowed because the buffers are batched too), and batch statistics are each member's own batch;
- early stopping, divergence, validation, the select part, metrics, checkpoints (train_one's layout, its
  AdamW state dict included, so train_one can resume a stacked member and the scorer loads it) and on_epoch
  reports: per member, through train_one's own end of an epoch (loop.close_epoch: a member's _Run is a
  loop.RunState). A finished member leaves the stack (its rows are dropped); the others go on.

Equal to train_one up to float rounding (vmapped convolutions accumulate in another order): see
tests/test_train_stacked.py and docs/training.md, "Stacked members".
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from crnn_ray.io import CliError
from crnn_ray.train.config import TrainConfig
from crnn_ray.train.loop import (
    DIVERGENCE_CHECK_STEPS,
    EpochSteps,
    RunState,
    TrainResult,
    _divergence,
    _epoch_order,
    _loss,
    _seen_data,
    _TrainData,
    close_epoch,
    new_workdir,
    resume_run,
    run_identity,
)
from crnn_ray.zoo import build_model

# crnn_ray.data (pandas, pyarrow) is imported where it is used, as in loop.py: `import crnn_ray.train` stays light.

#: torch.optim.AdamW's defaults, which train_one uses
BETAS = (0.9, 0.999)
EPS = 1e-8
#: TrainConfig fields that only shape training, not the data a run reads: members that differ only in these
#: (and share the splits) share one copy of the window on the device
TRAINING_ONLY = frozenset({
    "seed", "lr", "weight_decay", "grad_clip", "epochs", "patience", "early_stopping_metric",
    "max_steps_per_epoch", "eval_every", "select_scoring", "compile", "max_loss_ratio", "max_weight_growth",
    "batch_size", "loss", "eval_batch_size",
})
#: aten ops that launch no kernel on a GPU (views, metadata, allocation, host-side scalars)
NO_LAUNCH = frozenset("aten::" + name for name in (
    "as_strided", "as_strided_", "view", "reshape", "_reshape_alias", "_unsafe_view", "permute", "movedim",
    "transpose", "t", "squeeze", "unsqueeze", "expand", "expand_as", "view_as", "slice", "narrow", "select",
    "unbind", "split", "split_with_sizes", "chunk", "alias", "detach", "flatten", "unflatten", "contiguous",
    "empty", "empty_like", "empty_strided", "resize_", "set_", "lift_fresh", "result_type", "item",
    "_local_scalar_dense",
))


@dataclass
class StackMember:
    """One member of a stack: what train_one takes besides the spec, the panel and the device."""

    cfg: TrainConfig
    splits: object
    workdir: str | Path | None = None
    meta_extra: dict | None = None
    resume_from: str | Path | None = None
    on_epoch: Callable[[dict, Path], None] | None = None


@dataclass
class StackBatch:
    """One vmapped step's inputs for G rows of the stack (rows None: all of them, in order)."""

    x: torch.Tensor                     # [G, B, L, F] float32
    y: torch.Tensor                     # [G, B]
    loss: str = "mse"
    day: torch.Tensor | None = None     # "ic": day ordinal of each row within its batch [G, B]
    n_days: int = 0                     # "ic": days per batch (the largest of the G; empty days weigh 0)
    rows: torch.Tensor | None = None    # stack rows of the G members (long, on the device)
    masks: dict | None = None           # dropout masks {"<module>.mask": [G, ...]} (StackedModule.dropout_masks)


class _MaskedDropout(nn.Module):
    """Dropout whose mask comes in as a buffer (one per member under vmap), so the draws can be each member's
    own generator's, outside vmap. mask = bernoulli(1 - p) / (1 - p), as torch's CPU dropout makes it."""

    def __init__(self, p: float, feature: bool):
        super().__init__()
        self.p, self.feature = float(p), feature
        self.register_buffer("mask", torch.ones(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * self.mask


class StackedModule:
    """K members of one model as one vmapped module: flat parameters [K, N], stacked persistent buffers
    (BatchNorm running stats), per-member AdamW state and hyperparameters, one step for any subset of rows.

    `models`: the members' own modules (initialised as each would be alone); their weights are copied in.
    input_shape: (lookback, features) of one sample.
    lr, weight_decay, grad_clip: one per member (grad_clip None: no clipping, as train_one).
    compile_mode: torch.compile mode of the vmapped forward + loss (e.g. "reduce-overhead": CUDA graphs for
    the fixed-shape GPU step); None: eager.
    """

    def __init__(self, models: Sequence[nn.Module], input_shape: tuple[int, int], lr: Sequence[float],
                 weight_decay: Sequence[float], grad_clip: Sequence[float | None],
                 device: str | torch.device = "cpu", compile_mode: str | None = None):
        if not models:
            raise ValueError("StackedModule needs at least one member")
        self.device = torch.device(device)
        self.input_shape = tuple(input_shape)
        first = models[0]
        self.state_keys = list(first.state_dict().keys())
        named = list(first.named_parameters())
        self.param_names = [n for n, _ in named]
        self.param_shapes = [tuple(p.shape) for _, p in named]
        self.param_sizes = [p.numel() for _, p in named]
        persistent = set(self.state_keys)
        self.buffer_names = [n for n, _ in first.named_buffers() if n in persistent]
        with torch.no_grad():
            self.flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()])
                                     for m in models]).to(self.device).requires_grad_()
            self.buffers = {n: torch.stack([dict(m.named_buffers())[n].detach() for m in models]).to(self.device)
                            for n in self.buffer_names}
        self.exp_avg = torch.zeros_like(self.flat, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(self.flat, requires_grad=False)
        # per-member numbers in float64: AdamW computes its bias corrections and step size in Python floats, and
        # float64 cast to float32 gives the numbers its kernels use
        self.steps = torch.zeros(len(models), dtype=torch.float64, device=self.device)
        self.lr = torch.tensor([float(v) for v in lr], dtype=torch.float64, device=self.device)
        self.weight_decay = torch.tensor([float(v) for v in weight_decay], dtype=torch.float64, device=self.device)
        self.max_norm = torch.tensor([math.inf if v is None else float(v) for v in grad_clip],
                                     dtype=torch.float32, device=self.device)
        self.template = _template(first).to(self.device).train()
        self.dropouts = {n: m for n, m in self.template.named_modules() if isinstance(m, _MaskedDropout)}
        self._probe = copy.deepcopy(first).to(self.device)  # a lone copy: traces dropout call order and shapes
        self._plans: dict[int, list] = {}
        self._compile_mode = compile_mode
        self._functions: dict = {}

    @property
    def k(self) -> int:
        return self.flat.shape[0]

    # ---- the step ---------------------------------------------------------------------------------------

    def step(self, batch: StackBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, per-member loss, backward, per-member clipping and AdamW for batch.rows; returns the rows'
        losses [G] and gradient norms before clipping [G] (on the device; nothing waits for it)."""
        rows = batch.rows
        flat = self.flat if rows is None else self.flat.index_select(0, rows)
        params = {name: part.view(part.shape[0], *shape) for name, part, shape in
                  zip(self.param_names, torch.split(flat, self.param_sizes, dim=1), self.param_shapes)}
        buffers = self.buffers if rows is None else {n: b.index_select(0, rows) for n, b in self.buffers.items()}
        fn = self._function(batch.loss, batch.n_days if batch.day is not None else None)
        losses = fn(params, buffers, batch.masks or {}, batch.x, batch.y, batch.day)
        self.flat.grad = None
        losses.sum().backward()
        with torch.no_grad():
            if rows is not None:
                for name, b in buffers.items():  # BatchNorm updated the gathered rows' running stats
                    self.buffers[name].index_copy_(0, rows, b)
            norms = self._adamw(rows)
        return losses.detach(), norms

    def _function(self, loss: str, n_days: int | None):
        key = (loss, n_days)
        if key not in self._functions:
            member = functools.partial(_member_loss, self.template, loss, n_days)
            fn = torch.vmap(member, in_dims=(0, 0, 0, 0, 0, None if n_days is None else 0))
            if self._compile_mode is not None:
                fn = torch.compile(fn, mode=self._compile_mode, dynamic=False)
            self._functions[key] = fn
        return self._functions[key]

    def _adamw(self, rows: torch.Tensor | None) -> torch.Tensor:
        """clip_grad_norm_ and torch.optim.AdamW's single-tensor arithmetic, row by row (per-member numbers)."""
        grad = self.flat.grad if rows is None else self.flat.grad.index_select(0, rows)
        pick = (lambda t: t) if rows is None else (lambda t: t.index_select(0, rows))
        norms = torch.linalg.vector_norm(grad, dim=1)
        grad.mul_((pick(self.max_norm) / (norms + 1e-6)).clamp(max=1.0)[:, None])
        steps = pick(self.steps) + 1
        lr, wd = pick(self.lr), pick(self.weight_decay)
        step_size = (lr / (1 - BETAS[0] ** steps)).float()[:, None]
        bias2_sqrt = (1 - BETAS[1] ** steps).sqrt().float()[:, None]
        param = self.flat.data if rows is None else self.flat.data.index_select(0, rows)
        exp_avg, exp_avg_sq = pick(self.exp_avg), pick(self.exp_avg_sq)
        param.mul_((1 - lr * wd).float()[:, None])
        exp_avg.lerp_(grad, 1 - BETAS[0])
        exp_avg_sq.mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
        denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(EPS)
        param.sub_((exp_avg / denom).mul_(step_size))
        if rows is None:
            self.steps.add_(1)
        else:
            self.flat.data.index_copy_(0, rows, param)
            self.exp_avg.index_copy_(0, rows, exp_avg)
            self.exp_avg_sq.index_copy_(0, rows, exp_avg_sq)
            self.steps.index_copy_(0, rows, steps)
        return norms

    # ---- dropout --------------------------------------------------------------------------------------

    def dropout_masks(self, batch_size: int, generators: Sequence[torch.Generator]) -> dict:
        """Each member's dropout masks for one step of `batch_size` rows, drawn from its own generator in the
        order and shapes its lone forward would draw them: {"<module>.mask": [G, ...]}; {} without dropout."""
        masks: dict = {}
        if not self.dropouts:
            return masks
        for name, shape in self._plan(batch_size):
            module = self.dropouts[name]
            if module.p == 0.0:
                continue
            if module.p == 1.0:  # torch multiplies by zero, no draw
                masks[f"{name}.mask"] = torch.zeros((len(generators), *shape), device=self.device)
                continue
            keep = 1.0 - module.p
            masks[f"{name}.mask"] = torch.stack([
                torch.empty(shape, device=self.device).bernoulli_(keep, generator=g).div_(keep) for g in generators])
        return masks

    def _plan(self, batch_size: int) -> list:
        """(dropout module, noise shape) in forward call order for a batch of `batch_size` (traced once)."""
        if batch_size not in self._plans:
            calls: list = []
            hooks = []
            for name, module in self._probe.named_modules():
                if isinstance(module, (nn.Dropout, nn.Dropout1d)):
                    feature = isinstance(module, nn.Dropout1d)
                    hooks.append(module.register_forward_pre_hook(
                        functools.partial(_record_call, calls, name, feature)))
                elif isinstance(module, nn.modules.dropout._DropoutNd):
                    raise CliError(f"stacked training: {type(module).__name__} ({name}) is not supported")
            try:
                with torch.no_grad():
                    x = torch.zeros(batch_size, *self.input_shape, device=self.device)
                    self._probe.eval()(x)
            finally:
                for hook in hooks:
                    hook.remove()
            counts = Counter(name for name, _ in calls)
            if any(n > 1 for n in counts.values()):
                raise CliError(f"stacked training: a dropout module runs more than once per forward "
                               f"({', '.join(n for n, c in counts.items() if c > 1)})")
            self._plans[batch_size] = calls
        return self._plans[batch_size]

    # ---- members in and out -------------------------------------------------------------------------------

    def member_state(self, row: int) -> dict[str, torch.Tensor]:
        """Row `row` as a lone model's state dict (its keys and order; copies on the stack's device)."""
        parts = dict(zip(self.param_names, torch.split(self.flat.detach()[row], self.param_sizes)))
        shapes = dict(zip(self.param_names, self.param_shapes))
        return {key: (parts[key].view(shapes[key]) if key in parts else self.buffers[key][row]).clone()
                for key in self.state_keys}

    def load_member(self, row: int, state: dict[str, torch.Tensor], optimizer_state: dict | None = None,
                    model: nn.Module | None = None) -> None:
        """Put a lone state dict (and a torch AdamW state dict of `model`'s parameters) into row `row`."""
        with torch.no_grad():
            self.flat.data[row] = torch.cat([state[n].reshape(-1).to(self.device) for n in self.param_names])
            for name in self.buffer_names:
                self.buffers[name][row] = state[name].to(self.device)
            if optimizer_state is None:
                return
            opt = torch.optim.AdamW(model.parameters())
            opt.load_state_dict(optimizer_state)
            group = opt.param_groups[0]
            if tuple(group["betas"]) != BETAS or group["eps"] != EPS or group.get("amsgrad"):
                raise CliError(f"stacked training: optimizer state with betas {group['betas']}, eps {group['eps']}, "
                               f"amsgrad {group.get('amsgrad')}: only AdamW's defaults stack")
            params = [opt.state.get(p, {}) for p in model.parameters()]
            if all(params):
                self.exp_avg[row] = torch.cat([s["exp_avg"].reshape(-1).to(self.device) for s in params])
                self.exp_avg_sq[row] = torch.cat([s["exp_avg_sq"].reshape(-1).to(self.device) for s in params])
                self.steps[row] = float(params[0]["step"])
            self.lr[row], self.weight_decay[row] = float(group["lr"]), float(group["weight_decay"])

    def optimizer_state(self, row: int, model: nn.Module) -> dict:
        """Row `row`'s AdamW state as torch.optim.AdamW(model.parameters()).state_dict() (what train_one saves)."""
        opt = torch.optim.AdamW(model.parameters(), lr=float(self.lr[row]), weight_decay=float(self.weight_decay[row]))
        step = float(self.steps[row])
        if step > 0:
            m = torch.split(self.exp_avg[row], self.param_sizes)
            v = torch.split(self.exp_avg_sq[row], self.param_sizes)
            for p, m_i, v_i in zip(model.parameters(), m, v):
                opt.state[p] = {"step": torch.tensor(step, dtype=torch.get_default_dtype()),
                                "exp_avg": m_i.view(p.shape).clone().to(p.device),
                                "exp_avg_sq": v_i.view(p.shape).clone().to(p.device)}
        return opt.state_dict()

    def keep(self, rows: Sequence[int]) -> None:
        """Drop every row not in `rows` (finished members), in that order."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        with torch.no_grad():
            self.flat = self.flat.detach().index_select(0, index).requires_grad_()
            self.buffers = {n: b.index_select(0, index) for n, b in self.buffers.items()}
        self.exp_avg, self.exp_avg_sq = self.exp_avg.index_select(0, index), self.exp_avg_sq.index_select(0, index)
        self.steps, self.lr = self.steps.index_select(0, index), self.lr.index_select(0, index)
        self.weight_decay = self.weight_decay.index_select(0, index)
        self.max_norm = self.max_norm.index_select(0, index)


def _template(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Dropout / nn.Dropout1d replaced by a _MaskedDropout."""
    template = copy.deepcopy(model)
    for name, module in list(template.named_modules()):
        if isinstance(module, (nn.Dropout, nn.Dropout1d)):
            parent_name, _, child = name.rpartition(".")
            parent = template.get_submodule(parent_name) if parent_name else template
            setattr(parent, child, _MaskedDropout(module.p, isinstance(module, nn.Dropout1d)))
    return template


def _record_call(calls: list, name: str, feature: bool, module: nn.Module, args: tuple) -> None:
    shape = tuple(args[0].shape)
    if feature:  # Dropout1d: one draw per (sample, channel), as torch's feature noise
        if len(shape) != 3:
            raise CliError(f"stacked training: Dropout1d {name} got a {len(shape)}-d input (3-d only)")
        shape = shape[:2] + (1,)
    calls.append((name, shape))


def _member_loss(template: nn.Module, loss: str, n_days: int | None, params: dict, buffers: dict, masks: dict,
                 x: torch.Tensor, y: torch.Tensor, day: torch.Tensor | None) -> torch.Tensor:
    """One member's loss on its batch (what train_one's step computes); vmapped over the members."""
    pred = functional_call(template, (params, buffers, masks), (x,))
    return _loss(loss, pred, y, None if day is None else (day, n_days))


def count_aten_ops(fn: Callable[[], object], repeats: int = 2) -> dict:
    """aten ops per call of fn under torch.profiler (CPU): "aten_ops" every aten event, nested ones included;
    "launches" the leaf events that would launch a kernel on a GPU (NO_LAUNCH views/allocations left out)."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm: first-call set-up (plans, caches) is not a step
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    parents = {e.cpu_parent.id for e in events
               if e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")}
    launches = [e for e in events if e.id not in parents and e.name not in NO_LAUNCH]
    return {"aten_ops": len(events) / repeats, "launches": len(launches) / repeats}


# ---- train_stacked: train_one for K members at once ----------------------------------------------------


@dataclass
class _Run(RunState):
    """One member's run: train_one's per-run state (RunState, which close_epoch ends each epoch of) and the
    stack's own per member."""

    identity: int = 0                   # run_identity(spec, cfg): its data order (its window's data may be shared)
    epoch: int = 1                      # the next epoch to train
    generator: torch.Generator | None = None  # its dropout stream (train_one's global one)
    result: TrainResult | None = None
    # this round (epoch)
    batches: list | None = None
    order_rows: torch.Tensor | None = None
    steps: int = 0
    samples: int = 0
    diverged: str = ""
    train_loss: float = math.nan


def stack_compile_mode(configs: Sequence[TrainConfig]) -> str | None:
    """The torch.compile mode of a stack: its members' `compile` (the first one asking for a mode; None: eager)."""
    return next((mode for mode in (cfg.compile_mode() for cfg in configs) if mode), None)


def train_stacked(spec: str, panel, members: Sequence[StackMember], *, device: str | torch.device = "cpu",
                  sampler=None, compile_mode: str | None = None) -> list[TrainResult]:
    """Train `members` (one spec, one lookback) as one stacked module; one TrainResult per member, in order,
    each what train_one(spec, panel, m.splits, m.cfg, workdir=m.workdir, meta_extra=m.meta_extra,
    resume_from=m.resume_from, on_epoch=m.on_epoch) returns, up to float rounding.

    Every epoch is a round: each unfinished member trains its next epoch (its own batches, in lockstep: step s
    of every member that has one runs as one vmapped call per batch shape), then is validated, reported and
    checkpointed on its own. A member that finishes (early stopping, divergence, its epochs) leaves the stack.
    """
    device = torch.device(device)
    members = list(members)
    if not members:
        return []
    for m in members:
        m.cfg.validate()
    lookbacks = {m.cfg.lookback for m in members}
    if len(lookbacks) > 1:
        raise CliError(f"stacked training: members must share the lookback (the model's shape), "
                       f"got {sorted(lookbacks)}")
    n_features = len(panel.features)
    runs, models, optimizer_states, cache = [], [], [], {}
    for m in members:
        run, model, opt_state = _start(spec, panel, m, device, cache, n_features)
        runs.append(run)
        if run.result is None:
            models.append(model)
            optimizer_states.append(opt_state)
    live = [r for r in runs if r.result is None]
    if not live:
        return [r.result for r in runs]
    # rows of members sharing a window next to each other (their batches gather in one call), else in order
    first = {}
    for j, run in enumerate(live):
        first.setdefault(id(run.data), j)
    order = sorted(range(len(live)), key=lambda j: (first[id(live[j].data)], j))
    live, models = [live[j] for j in order], [models[j] for j in order]
    optimizer_states = [optimizer_states[j] for j in order]
    compile_mode = compile_mode or stack_compile_mode([r.cfg for r in live])
    stack = StackedModule(models, (members[0].cfg.lookback, n_features), [r.cfg.lr for r in live],
                          [r.cfg.weight_decay for r in live], [r.cfg.grad_clip for r in live], device, compile_mode)
    scratch = models[0]  # a lone model: each member's weights are loaded into it to validate and checkpoint
    for row, (model, opt_state) in enumerate(zip(models, optimizer_states)):
        if opt_state is not None:
            stack.load_member(row, model.state_dict(), opt_state, model)
    forward = torch.compile(scratch, mode=compile_mode) if compile_mode else scratch
    del models
    if sampler is not None:
        sampler.sample()  # start the CPU-use window at the first round
    while live:
        train_s = _train_round(stack, live, device)
        sample = sampler.sample() if sampler is not None else None
        for row, run in enumerate(live):
            scratch.load_state_dict(stack.member_state(row))
            _close_epoch(run, stack, row, scratch, forward, train_s, sample)
        keep = [row for row, run in enumerate(live) if run.result is None]
        if len(keep) < len(live):
            stack.keep(keep)
            live = [live[row] for row in keep]
    return [r.result for r in runs]


def _start(spec: str, panel, member: StackMember, device: torch.device, cache: dict, n_features: int):
    """A member's run, model and (resumed) optimizer state, as train_one sets them up."""
    t_setup = time.perf_counter()
    cfg = member.cfg
    meta_extra = dict(member.meta_extra or {})
    meta_extra["seen_data"] = _seen_data(panel, member.splits, cfg)
    key = (member.splits, tuple((f.name, getattr(cfg, f.name)) for f in fields(cfg) if f.name not in TRAINING_ONLY))
    if key not in cache:  # members of one window share its data on the device
        cache[key] = _TrainData.build(spec, panel, member.splits, cfg, device)
    data = cache[key]
    setup_s = time.perf_counter() - t_setup
    torch.manual_seed(cfg.seed)
    model = build_model(spec, n_features, cfg.lookback).to(device)
    run = _Run.start(spec, panel, member.splits, cfg, data, model, meta_extra=meta_extra, on_epoch=member.on_epoch,
                     setup_s=setup_s, identity=run_identity(spec, cfg), generator=torch.Generator(device=device))
    opt_state = None
    if member.resume_from is not None:
        state = resume_run(run, model, member.resume_from)
        opt_state = state["optimizer"]
        run.epoch = int(state["epoch"]) + 1
        if run.status != "running":
            run.result = run.train_result()
    if run.result is None:
        run.workdir = new_workdir(member.workdir)
    return run, model, opt_state


def _train_round(stack: StackedModule, live: list[_Run], device: torch.device) -> float:
    """Every live member's next epoch, in lockstep; returns the round's training seconds."""
    t0 = time.perf_counter()
    cohorts = _prepare_round(live, device)
    n_steps = max(len(r.batches) for r in live)
    losses = torch.full((n_steps, len(live)), math.nan, device=device)
    norms = torch.full((n_steps, len(live)), math.nan, device=device)
    for step in range(n_steps):
        active = [row for row, r in enumerate(live) if step < len(r.batches) and not r.diverged]
        if not active:
            break
        groups = defaultdict(list)  # one vmapped call per batch shape and loss
        for row in active:
            lo, hi, _ = live[row].batches[step]
            groups[(hi - lo, live[row].cfg.loss)].append(row)
        for (size, loss), rows in groups.items():
            batch = _batch(stack, live, rows, step, size, loss, cohorts, device)
            step_losses, step_norms = stack.step(batch)
            if batch.rows is None:
                losses[step], norms[step] = step_losses, step_norms
            else:
                losses[step].index_copy_(0, batch.rows, step_losses)
                norms[step].index_copy_(0, batch.rows, step_norms)
        for row in active:
            run = live[row]
            lo, hi, _ = run.batches[step]
            run.steps, run.samples = step + 1, run.samples + (hi - lo)
        # train_one looks at its losses every DIVERGENCE_CHECK_STEPS steps and at its last step
        check = [row for row in active
                 if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 or step + 1 == len(live[row].batches)]
        if check:
            index = torch.as_tensor(check, device=device)
            bad = ~(torch.isfinite(losses[: step + 1].index_select(1, index))
                    & torch.isfinite(norms[: step + 1].index_select(1, index))).all(dim=0)
            for row, is_bad in zip(check, bad.tolist()):
                if is_bad:
                    live[row].diverged = _divergence(losses[: step + 1, row], norms[: step + 1, row], live[row].epoch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t0
    values = losses.double().cpu().numpy()
    for row, run in enumerate(live):
        run.train_loss = float(np.mean(values[: run.steps, row])) if run.steps else math.nan
    return train_s


def _prepare_round(live: list[_Run], device: torch.device) -> dict:
    """Each member's epoch order (train_one's), its dropout seed, and the members whose batches are cut alike
    from one window (mse, one batch size): their sample rows stacked [G, n, 2] so a step slices them at once."""
    by_key = defaultdict(list)
    for row, run in enumerate(live):
        run.generator.manual_seed(run.cfg.seed * 1000 + run.epoch)  # train_one: torch.manual_seed at each epoch
        order = _epoch_order(run.cfg, run.epoch, run.data.day_starts, run.data.day_counts, device, run.identity)
        run.batches, run.steps, run.samples, run.diverged = order.batches, 0, 0, ""
        run.order_rows = run.data.train_rows[order.perm_dev]
        if run.cfg.loss == "mse":
            by_key[(id(run.data), tuple((lo, hi) for lo, hi, _ in order.batches))].append(row)
    cohorts = {}
    for rows in by_key.values():
        if len(rows) > 1:
            stacked = torch.stack([live[row].order_rows for row in rows])
            for position, row in enumerate(rows):
                cohorts[row] = (tuple(rows), stacked, position)
    return cohorts


def _batch(stack: StackedModule, live: list[_Run], rows: list[int], step: int, size: int, loss: str,
           cohorts: dict, device: torch.device) -> StackBatch:
    """The vmapped step's inputs for stack rows `rows` (each member's own batch `step`)."""
    from crnn_ray.data import gather_windows  # deferred: see the imports

    runs = [live[row] for row in rows]
    lookback = runs[0].cfg.lookback
    lo, hi, _ = runs[0].batches[step]
    xs, ys = [], []
    i = 0
    while i < len(rows):  # runs of consecutive members on one window gather in one call
        j = i + 1
        while j < len(rows) and runs[j].data is runs[i].data:
            j += 1
        cohort = cohorts.get(rows[i])
        if cohort is not None and cohort[0] == tuple(rows[i:j]):
            sample_rows = cohort[1][:, lo:hi]
        else:
            sample_rows = torch.stack([r.order_rows[r.batches[step][0]: r.batches[step][1]] for r in runs[i:j]])
        days, stocks = sample_rows[..., 0].reshape(-1), sample_rows[..., 1].reshape(-1)
        data = runs[i].data
        xs.append(gather_windows(data.X, days, stocks, lookback).float().view(j - i, size, lookback, -1))
        ys.append(data.y[days, stocks].view(j - i, size))
        i = j
    x, y = (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))
    day, n_days = None, 0
    if loss == "ic":
        segments = [r.batches[step][2] for r in runs]
        day, n_days = torch.stack([s[0] for s in segments]), max(s[1] for s in segments)
    all_rows = rows == list(range(len(live)))
    return StackBatch(x=x, y=y, loss=loss, day=day, n_days=n_days,
                      rows=None if all_rows else torch.as_tensor(rows, dtype=torch.long, device=device),
                      masks=stack.dropout_masks(size, [r.generator for r in runs]))


def _close_epoch(run: _Run, stack: StackedModule, row: int, model: nn.Module, forward, train_s: float,
                 sample: dict | None) -> None:
    """train_one's end of an epoch (close_epoch) for the member in stack row `row`, its weights loaded in
    `model`: its round's training as its steps, its optimizer state from the stack, its own dropout generator as
    the RNG state; it leaves with its TrainResult once finished."""
    steps = EpochSteps(run.train_loss, run.samples, train_s, run.diverged)
    status = close_epoch(run, model, forward, run.epoch, steps, started=None,
                         optimizer_state=functools.partial(stack.optimizer_state, row, model),
                         rng_state=lambda: {"torch": run.generator.get_state()},
                         sample=None if sample is None else (lambda: sample))
    run.epoch += 1
    if status != "running":
        run.result = run.train_result()
