"""`EnsemblePredictor`: all K members and the normalised features in one object, scoring (day, stock) rows.

Rows are integer indices into the features' first two axes (no labels: the scorer keeps dates and symbols
for the files it writes). The same class is the Ray Data callable (one instance per actor, built once, fed
batches of indices) and the in-process scorer for small jobs, so both paths run identical code. Plain
PyTorch, no Ray import.

Each row's lookback window is gathered by index from the features held in memory (on the GPU when there is
one), never materialised for the whole panel. Rows are pushed through the models in fixed-size chunks, the
last one padded: a CPU kernel's result for a row can depend on the batch size it runs in (by ~1e-8), and
fixed chunks make every row's prediction independent of how Ray Data happened to cut the batches -- so the
Ray Data and in-process paths agree bit for bit.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from crnn_ray.data import gather_windows
from crnn_ray.zoo import build_model

__all__ = ["EnsemblePredictor", "member_payload", "build_member_model", "CHUNK_ROWS", "resolve_chunk_rows"]

#: chunk_rows "auto" by device. CPU: 512 -- the recurrent members' per-step gate maps of a 1,024-row chunk
#: ([rows, gates x width, positions] float32, ~1.5 MB each, several live per step) spill out of a core's L2 and
#: the lookback loop turns memory-bound; 384-512 rows ran the five bench members ~1.5x faster than 1,024
#: (docs/scoring.md), with bit-identical predictions on the development CPU. GPU: 1,024 as before (a smaller
#: chunk only adds kernel launches there).
CHUNK_ROWS = {"cpu": 512, "cuda": 1024}


def resolve_chunk_rows(chunk_rows: int | str, device: str | torch.device) -> int:
    """The fixed model batch: an explicit size, or "auto" -> CHUNK_ROWS of the device's type."""
    if chunk_rows == "auto":
        return CHUNK_ROWS["cuda" if torch.device(device).type == "cuda" else "cpu"]
    return int(chunk_rows)


def member_payload(name: str, meta: dict, state_dict: dict, feature_index: list[int], input_key: str) -> dict:
    """What the predictor needs of one member (plain data, cheap to ship to a Ray actor)."""
    return {
        "name": name, "spec": meta["spec"], "lookback": int(meta["lookback"]),
        "feature_index": [int(i) for i in feature_index], "input": input_key,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }


def build_member_model(payload: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The member's module with its weights, in eval mode (dropout off, batchnorm on running stats)."""
    model = build_model(payload["spec"], len(payload["feature_index"]), int(payload["lookback"]))
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.to(device).eval()


class EnsemblePredictor:
    """Callable over batches of (day, stock) rows -> the rows plus one raw prediction column per member.

    inputs:  {input key: normalised features float32 [D, S, F]} (one per normalisation; usually one); read
             only, so a Ray actor can use the object store's copy without one of its own
    threads: torch intra-op threads (a Ray actor passes its CPU grant; None leaves torch's default)
    workers: CPU only -- chunks scored by this many Python threads at once, each op single-threaded (torch's
             intra-op threads set to 1 while they run). The members' ops are small (a 20-step loop of convs
             on [chunk, 48, 8] maps), so torch's own threads meet at a barrier after every op: on a shared
             machine one descheduled thread stalls them all (measured on the 2-CPU box under load: 2 intra-op
             threads 32 rows/s, 1 thread 1,550-2,300). Independent chunks on independent threads degrade
             gracefully instead, and each chunk's numbers are those of one thread, as on a 1-CPU Ray actor.
    """

    def __init__(self, members: list[dict], inputs: dict[str, np.ndarray], *, device: str = "auto",
                 chunk_rows: int | str = "auto", threads: int | None = None, workers: int = 1):
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # a fake (declared) GPU: same code path, CPU tensors
        self.device = torch.device(device)
        self.chunk_rows = resolve_chunk_rows(chunk_rows, self.device)
        self.workers = max(1, int(workers)) if self.device.type == "cpu" else 1  # a GPU: one stream of chunks
        with warnings.catch_warnings():  # object-store arrays are read-only; the features are never written
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.inputs = {k: torch.as_tensor(np.ascontiguousarray(v, dtype=np.float32), device=self.device)
                           for k, v in inputs.items()}
        self.shape = next(iter(inputs.values())).shape[:2]
        self.members = members
        self.names = [m["name"] for m in members]
        self.models = [build_member_model(m, self.device) for m in members]
        self.max_lookback = {k: max(int(m["lookback"]) for m in members if m["input"] == k) for k in inputs}
        self.feature_index = [torch.as_tensor(m["feature_index"], device=self.device, dtype=torch.long)
                              for m in members]
        # where the time goes, summed over calls: each member's forward passes (its rows/s in the job's log
        # line) and the shared window gathers
        self.member_seconds = np.zeros(len(members))
        self.gather_seconds = 0.0

    # ------------------------------------------------------------------------------------------- predict
    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still tracks versions): same values
    def predict_indices(self, day: np.ndarray, stock: np.ndarray, progress=None) -> np.ndarray:
        """float32 [N, K] raw predictions of every member for rows (day, stock); `progress(rows)` (e.g.
        crnn_ray.console.Progress.add) after each chunk."""
        day, stock = np.array(day, dtype=np.int64), np.array(stock, dtype=np.int64)  # writable: torch shares them
        n = len(day)
        out = np.empty((n, len(self.models)), dtype=np.float32)
        if n == 0:
            return out
        outside = (day < 0) | (day >= self.shape[0]) | (stock < 0) | (stock >= self.shape[1])
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise ValueError(f"row (day {day[i]}, stock {stock[i]}) not in the predictor's panel "
                             f"({self.shape[0]} days x {self.shape[1]} stocks)")
        too_early = [k for k, lb in self.max_lookback.items() if int(day.min()) < lb - 1]
        if too_early:
            raise ValueError(f"day {int(day.min())} has fewer than {self.max_lookback[too_early[0]]} days of history")
        starts = range(0, n, self.chunk_rows)
        workers = min(self.workers, len(starts))
        def chunk(lo: int) -> tuple[float, np.ndarray]:
            timing = self._chunk(day, stock, lo, out)
            if progress is not None:
                progress(min(self.chunk_rows, n - lo))
            return timing

        if workers == 1:
            timings = [chunk(lo) for lo in starts]
        else:
            before = torch.get_num_threads()
            torch.set_num_threads(1)  # process-wide: restored for the caller below
            try:
                with ThreadPoolExecutor(workers, thread_name_prefix="predict") as pool:
                    timings = list(pool.map(chunk, starts))
            finally:
                torch.set_num_threads(before)
        for gather, members in timings:  # summed here, not from the threads: no racing updates
            self.gather_seconds += gather
            self.member_seconds += members
        return out

    @torch.inference_mode()  # per thread: autograd's mode is thread-local
    def _chunk(self, day: np.ndarray, stock: np.ndarray, lo: int, out: np.ndarray) -> tuple[float, np.ndarray]:
        """Rows lo .. lo + chunk_rows into `out` (padded to the fixed chunk); (gather seconds, member seconds)."""
        C = self.chunk_rows
        d = torch.as_tensor(day[lo:lo + C], device=self.device)
        s = torch.as_tensor(stock[lo:lo + C], device=self.device)
        m = len(d)
        if m < C:  # pad with the chunk's first row: the same batch shape for every chunk
            d = torch.cat([d, d[:1].expand(C - m)])
            s = torch.cat([s, s[:1].expand(C - m)])
        t0 = time.perf_counter()
        windows = {k: gather_windows(x, d, s, self.max_lookback[k]) for k, x in self.inputs.items()}
        gather = time.perf_counter() - t0
        seconds = np.zeros(len(self.models))
        for j, (member, model) in enumerate(zip(self.members, self.models)):
            t0 = time.perf_counter()
            w = windows[member["input"]][:, -int(member["lookback"]):, :]
            w = w.index_select(2, self.feature_index[j])
            out[lo:lo + m, j] = model(w.contiguous())[:m].float().cpu().numpy()  # .cpu() syncs a GPU
            seconds[j] = time.perf_counter() - t0
        return gather, seconds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data batch (numpy dict or DataFrame) with `day`, `stock` -> those plus one column per member."""
        day, stock = np.asarray(batch["day"]), np.asarray(batch["stock"])
        preds = self.predict_indices(day, stock)
        return {"day": day, "stock": stock, **{name: preds[:, j] for j, name in enumerate(self.names)}}
