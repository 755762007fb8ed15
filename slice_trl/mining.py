"""Mining adversarial task sequences (docs/method.md, "Mining NI-Seq-Opposite").

Pipeline (`mine_pool` runs it; ``python -m slice_trl.mine`` is the command line):

1. per task i, the mean gradient g_i of the frozen base model over the target weights on a
   small calibration sample of the task's TRAIN split (`slice_trl.kernels.gradients` probe, the loss
   SFTTrainer trains with), compressed with a CountSketch of size k (`CountSketch`), keeping the
   EXACT squared norm ||g_i||^2 of the full gradient; one cache file per task (`GradientCache`);
2. the pairwise cosine matrix cos_ij = <S g_i, S g_j> / (||g_i|| ||g_j||) (`cosine_matrix`);
3. exhaustive scoring of every N-subset by the mean of its pairwise cosines, from the M x M pair
   scores, keeping the K lowest (`top_subsets`, vectorised numpy over lexicographic chunks);
4. a training order for the best subset: the order minimising the sum of consecutive-pair
   cosines (`best_order`; the reference returns the set in alphabetical order), a cosine heatmap
   and a recipe YAML.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Bumped when the cached content or its meaning changes, so old caches are not reused.
CACHE_VERSION = 2


# --------------------------------------------------------------------------------------------
# CountSketch
# --------------------------------------------------------------------------------------------

# The hash field: the Mersenne prime p = 2^31 - 1. Module entries are indexed below 2^30 and the
# Horner accumulator is kept below 3 * 2^31 (one fold per step, 2^31 = 1 mod p), so
# h * i + c < 3 * 2^61 + 2^31 < 2^63: the hashes are exact int64 arithmetic, identical on every
# device and torch version.
_HASH_PRIME = 2**31 - 1
_HASH_DEGREE = 3  # cubic polynomials over Z_p: 4-wise independent hash families
_MAX_MODULE_ENTRIES = 2**30


def _fold_(h: torch.Tensor) -> torch.Tensor:
    """In place: h -> (h & p) + (h >> 31), congruent mod p and below 2^31 + h / 2^31.
    Shifts and masks only (an int64 division costs several times more on CPU)."""
    high = h >> 31
    return h.bitwise_and_(_HASH_PRIME).add_(high)


def _poly_hash(index: torch.Tensor, coeffs: Sequence[int]) -> torch.Tensor:
    """(c0 i^3 + c1 i^2 + c2 i + c3) mod p for int64 indices 0 <= i < 2^30, fully reduced."""
    h = torch.full_like(index, coeffs[0])
    for c in coeffs[1:]:
        _fold_(h.mul_(index).add_(c))  # < 2^31 + 2^32 after the fold
    _fold_(h)  # < 2^31 + 4
    return h.sub_((h >= _HASH_PRIME).to(h.dtype).mul_(_HASH_PRIME))


class CountSketch:
    """CountSketch of a dict of per-module gradients into one vector of size ``k``.

    Every module gets its own bucket hash h: [0, d) -> [0, k) and sign hash s: [0, d) -> {-1, +1}:
    random cubic polynomials over Z_p (p = 2^31 - 1; 4-wise independent families) whose
    coefficients are drawn from ``random.Random`` seeded by the seed and the module's name. The
    hashes therefore depend only on (seed, module name, k), not on module order, device or torch
    version (exact integer arithmetic), so sketches of different tasks, runs and machines are
    comparable. The sketch of the whole gradient is sum over modules of
    ``scatter_add(h, s * g.flatten())``; <S a, S b> is an unbiased estimate of <a, b>. Cosines
    divide by the EXACT norms, which `sketch` returns alongside.

    Hashes are the same for every task, so up to ``memo_bytes`` of them are kept between calls
    (int32 bucket + int8 sign, 5 bytes an entry): on CPU, hashing then costs one pass per run,
    not one per task. Entries are processed in chunks of ``chunk`` to bound temporaries.
    """

    def __init__(self, k: int, seed: int = 42, chunk: int = 1 << 22, memo_bytes: int = 2 << 30):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < _HASH_PRIME:
            raise ValueError(f"sketch_size k={k!r} must be an integer >= 1 (the reference uses 200000) and "
                             "below 2^31 - 1.")
        self.k = int(k)
        self.seed = int(seed)
        self.chunk = int(chunk)
        self.memo_bytes = int(memo_bytes)
        self._memo: dict[tuple[str, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._memo_used = 0

    def _coefficients(self, name: str) -> tuple[list[int], list[int]]:
        import random

        # random.Random with a str seed is stable across processes and Python versions
        rng = random.Random(f"countsketch/{self.seed}/{name}")

        def draw():
            return [rng.randrange(1, _HASH_PRIME)] + [rng.randrange(_HASH_PRIME) for _ in range(_HASH_DEGREE)]

        return draw(), draw()

    def hashes(self, name: str, start: int, stop: int, device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hashes of the flat entries ``start..stop-1`` of module ``name``: ``(buckets (n,) int64
        in [0, k), signs (n,) int8 in {-1, +1})``."""
        if stop > _MAX_MODULE_ENTRIES:
            raise ValueError(f"Module {name!r} has {stop} entries; the sketch hashes support up to 2^30.")
        bucket_c, sign_c = self._coefficients(name)
        index = torch.arange(start, stop, dtype=torch.int64, device=device)
        # multiply-shift onto [0, k): h < 2^31 and k < 2^31, so h * k < 2^62 (no division)
        buckets = _poly_hash(index, bucket_c).mul_(self.k).bitwise_right_shift_(31)
        signs = (_poly_hash(index, sign_c) & 1).to(torch.int8).mul_(-2).add_(1)
        return buckets, signs

    def _chunk_hashes(self, name: str, start: int, stop: int, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (name, start, str(device))
        if key in self._memo:
            buckets, signs = self._memo[key]
            return buckets.long(), signs
        buckets, signs = self.hashes(name, start, stop, device)
        if self._memo_used + 5 * (stop - start) <= self.memo_bytes:
            self._memo[key] = (buckets.to(torch.int32), signs)
            self._memo_used += 5 * (stop - start)
        return buckets, signs

    @torch.no_grad()
    def sketch(self, grads: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        """Sketch a gradient dict.

        Args:
            grads: {module name: tensor of any shape (typically (d_out, d_in))}.

        Returns:
            (sketch (k,) float64 on CPU, exact squared norm sum_m ||g_m||_F^2 as a Python float,
            accumulated in float64).
        """
        device = next(iter(grads.values())).device if grads else torch.device("cpu")
        out = torch.zeros(self.k, dtype=torch.float64, device=device)
        sq_norm = torch.zeros((), dtype=torch.float64, device=device)
        for name in sorted(grads):  # fixed order: the float sums do not depend on dict order
            flat = grads[name].detach().reshape(-1)
            for start in range(0, flat.numel(), self.chunk):
                part = flat[start:start + self.chunk].to(torch.float64)
                sq_norm += part.dot(part)
                buckets, signs = self._chunk_hashes(name, start, start + part.numel(), part.device)
                out.scatter_add_(0, buckets, part.mul_(signs))
        return out.cpu(), float(sq_norm)


def exact_cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Cosine of two whole-model gradients (all modules flattened into one vector), in float64."""
    if set(a) != set(b):
        raise ValueError("The two gradient dicts hold different modules.")
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in a)
    na = sum(float(a[n].double().pow(2).sum()) for n in a)
    nb = sum(float(b[n].double().pow(2).sum()) for n in b)
    return dot / math.sqrt(na * nb) if na > 0 and nb > 0 else 0.0


def cosine_matrix(sketches: torch.Tensor | np.ndarray, sq_norms: Sequence[float] | np.ndarray) -> np.ndarray:
    """Pairwise cosine matrix from sketches and exact squared norms.

    Args:
        sketches: (M, k) sketches (float64 preferred).
        sq_norms: (M,) exact squared norms of the unsketched gradients.

    Returns:
        (M, M) float64 matrix, cos_ij = <s_i, s_j> / sqrt(n_i n_j), diagonal set to 1. A sketch
        cosine may fall slightly outside [-1, 1]; it is clipped. A zero gradient has cosine 0
        with everything (it carries no direction).
    """
    s = np.asarray(sketches.cpu().numpy() if torch.is_tensor(sketches) else sketches, dtype=np.float64)
    n = np.sqrt(np.asarray(sq_norms, dtype=np.float64))
    dots = s @ s.T
    denom = np.outer(n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, dots / denom, 0.0)
    cos = np.clip(cos, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)
    return cos


# --------------------------------------------------------------------------------------------
# Exhaustive subset search
# --------------------------------------------------------------------------------------------

def _comb_table(m: int, n: int) -> np.ndarray:
    """table[a, b] = C(a, b) for 0 <= a <= m, 0 <= b <= n, as float64 (counts can exceed int64
    only for searches nobody can run; float keeps the arithmetic safe)."""
    t = np.zeros((m + 1, n + 1), dtype=np.float64)
    for a in range(m + 1):
        for b in range(n + 1):
            t[a, b] = math.comb(a, b)
    return t


def _expand(idx: np.ndarray, score: np.ndarray, flat_pairs: np.ndarray, m: int, n: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Extend every prefix by each admissible next index, in lexicographic order.

    idx: (P, j) lexicographically sorted prefixes, strictly increasing along rows; score: (P,)
    sum of the prefixes' pair scores. The next index at position j (0-based) runs from last+1 to
    m-n+j, so every prefix still has room for a full n-subset (no dead rows are built).
    Returns (P', j+1) and (P',), still in lexicographic order.
    """
    p, j = idx.shape
    last = idx[:, -1].astype(np.int64)
    counts = (m - n + j) - last
    total = int(counts.sum())
    rows = np.repeat(np.arange(p), counts)
    # position inside each prefix's run: 0, 1, ..., counts-1
    starts = np.cumsum(counts) - counts
    offset = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    new = last[rows] + 1 + offset
    new_idx = np.empty((total, j + 1), dtype=idx.dtype)
    new_idx[:, :j] = idx[rows]
    new_idx[:, j] = new
    new_score = score[rows]
    for col in range(j):  # add the pair scores of the new element with each earlier one
        new_score += flat_pairs[new_idx[:, col].astype(np.int64) * m + new]
    return new_idx, new_score


def iter_subset_scores(pairs: np.ndarray, n: int, chunk_size: int = 1 << 20
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every n-subset of range(M) with the SUM of its pairwise scores, in lexicographic order.

    Args:
        pairs: (M, M) symmetric pair scores (the diagonal is never read).
        n: subset size, 2 <= n <= M.
        chunk_size: bound on the rows of one yielded chunk (one prefix may exceed it only if a
            single prefix of length n-1 has more completions, i.e. never for chunk_size >= M).

    Yields:
        (idx (c, n) int16 sorted indices, sums (c,) float64).
    """
    pairs = np.ascontiguousarray(pairs, dtype=np.float64)
    m = pairs.shape[0]
    if not 2 <= n <= m:
        raise ValueError(f"Subset size n={n} must be between 2 and the pool size {m}.")
    flat = pairs.ravel()
    comb = _comb_table(m, n)
    dtype = np.int16 if m < 2**15 else np.int32

    def rec(idx: np.ndarray, score: np.ndarray):
        j = idx.shape[1]
        if j == n:
            yield idx, score
            return
        # completions of each prefix: choose the remaining n-j indices among those after `last`
        completions = comb[m - 1 - idx[:, -1].astype(np.int64), n - j]
        if completions.sum() <= chunk_size:
            while idx.shape[1] < n:
                idx, score = _expand(idx, score, flat, m, n)
            yield idx, score
            return
        if len(idx) == 1:
            yield from rec(*_expand(idx, score, flat, m, n))
            return
        # split the prefixes greedily into consecutive groups of at most chunk_size completions,
        # keeping lexicographic order; a group has at least one prefix, and the total exceeds
        # chunk_size, so there are >= 2 groups and the recursion ends
        cum = np.cumsum(completions)
        lo = 0
        while lo < len(idx):
            base = cum[lo - 1] if lo else 0.0
            hi = max(lo + 1, int(np.searchsorted(cum, base + chunk_size, side="right")))
            yield from rec(idx[lo:hi], score[lo:hi])
            lo = hi

    first = np.arange(m - n + 1, dtype=dtype)[:, None]
    yield from rec(first, np.zeros(len(first), dtype=np.float64))


def top_subsets(pairs: np.ndarray, n: int, k: int = 10, chunk_size: int = 1 << 20, progress: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """The k n-subsets with the LOWEST mean pairwise score, found exhaustively.

    Ties are broken by lexicographic order of the index tuples (the enumeration order), so the
    result is deterministic and equals a brute force over ``itertools.combinations`` sorted by
    (score, tuple).

    Args:
        pairs: (M, M) symmetric pair scores (e.g. `cosine_matrix`).
        n: subset size; k: how many subsets to keep (capped at C(M, n)).

    Returns:
        (subsets (k', n) int64 sorted index tuples, best first; means (k',) float64).
    """
    m = np.asarray(pairs).shape[0]
    if isinstance(k, bool) or int(k) < 1:
        raise ValueError(f"top k={k!r} must be >= 1.")
    if not 2 <= n <= m:
        raise ValueError(f"Subset size n={n} must be between 2 and the pool size {m}.")
    total = math.comb(m, n)
    k = min(int(k), total)
    n_pairs = n * (n - 1) // 2
    best_idx = np.empty((0, n), dtype=np.int64)
    best_sum = np.empty(0, dtype=np.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"scoring C({m},{n}) subsets", unit="subset", unit_scale=True)
    try:
        for idx, sums in iter_subset_scores(pairs, n, chunk_size):
            n_chunk = len(sums)
            if n_chunk > k:
                # keep every row up to the k-th smallest value (ties included), in enumeration order
                kth = np.partition(sums, k - 1)[k - 1]
                keep = np.flatnonzero(sums <= kth)
                idx, sums = idx[keep], sums[keep]
            # earlier chunks come first in the concatenation and the sort is stable: lexicographic
            # tie-breaking survives the merge
            cand_idx = np.concatenate([best_idx, idx.astype(np.int64)])
            cand_sum = np.concatenate([best_sum, sums])
            order = np.argsort(cand_sum, kind="stable")[:k]
            best_idx, best_sum = cand_idx[order], cand_sum[order]
            if bar is not None:
                bar.update(n_chunk)
    finally:
        if bar is not None:
            bar.close()
    return best_idx, best_sum / n_pairs


def best_order(pairs: np.ndarray) -> tuple[list[int], float]:
    """The order of a set that minimises the sum of consecutive-pair scores (a shortest
    Hamiltonian path, Held-Karp dynamic programme, O(2^n n^2)).

    A path and its reverse cost the same; among optimal orders the lexicographically smallest
    index sequence is returned, so the caller fixes the tie-break by how it indexes the set (the
    miner sorts the set by task name first).

    Args:
        pairs: (n, n) symmetric pair scores of the set's members.

    Returns:
        (order as a list of indices into ``pairs``, its sum of consecutive-pair scores).
    """
    c = np.asarray(pairs, dtype=np.float64)
    n = c.shape[0]
    if n == 1:
        return [0], 0.0
    if n > 16:
        raise ValueError(f"Ordering a set of {n} tasks exactly is too costly (2^n states); use n <= 16.")
    full = (1 << n) - 1
    # f[mask, i]: cheapest path that starts at i and visits exactly the members of mask
    f = np.full((1 << n, n), np.inf)
    for i in range(n):
        f[1 << i, i] = 0.0
    for mask in range(1, full + 1):
        for i in range(n):
            if not mask >> i & 1 or mask == 1 << i:
                continue
            rest = mask ^ (1 << i)
            js = [j for j in range(n) if rest >> j & 1]
            f[mask, i] = min(c[i, j] + f[rest, j] for j in js)
    tol = 1e-12 * max(1.0, float(np.abs(c).max()) * n)
    best = float(f[full].min())
    order = [int(np.flatnonzero(f[full] <= best + tol)[0])]
    mask = full
    while mask != 1 << order[-1]:
        i = order[-1]
        rest = mask ^ (1 << i)
        for j in range(n):  # smallest next index that stays on an optimal path
            if rest >> j & 1 and c[i, j] + f[rest, j] <= f[mask, i] + tol:
                order.append(j)
                break
        mask = rest
    cost = float(sum(c[a, b] for a, b in zip(order, order[1:])))
    return order, cost


# --------------------------------------------------------------------------------------------
# Pool configuration
# --------------------------------------------------------------------------------------------

class PoolError(ValueError):
    """A problem with the pool file or the command's arguments (reported without a traceback)."""


def _unknown_keys(where: str, data: Mapping, known: Sequence[str]) -> None:
    import difflib

    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise PoolError(f"{where} has no key {key!r}.{hint} Known keys: {sorted(known)}.")


def _positive_int(where: str, value, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PoolError(f"{where}={value!r} must be an integer >= 1{' or null' if allow_none else ''}.")
    return value


@dataclasses.dataclass
class CalibrationConfig:
    """The calibration sample of each task: ``batches`` mini-batches of ``batch_size`` training
    examples (reference CLI default: 4 x 4), sequences fitted to ``max_length`` tokens."""

    batches: int = 4
    batch_size: int = 4
    max_length: int = 256
    micro_batch_size: int | None = None
    completion_only_loss: bool | None = None  # None: TRL's default (completion-only for prompt/completion data)

    @classmethod
    def from_dict(cls, data) -> "CalibrationConfig":
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PoolError(f"calibration={data!r} must be a mapping such as {{batches: 4, batch_size: 4, max_length: 256}}.")
        _unknown_keys("calibration", data, [f.name for f in dataclasses.fields(cls)])
        cfg = cls(**data)
        for key in ("batches", "batch_size", "max_length"):
            _positive_int(f"calibration.{key}", getattr(cfg, key))
        _positive_int("calibration.micro_batch_size", cfg.micro_batch_size, allow_none=True)
        if cfg.completion_only_loss not in (None, True, False):
            raise PoolError(f"calibration.completion_only_loss={cfg.completion_only_loss!r} must be true, false or null.")
        return cfg


@dataclasses.dataclass
class Pool:
    """A validated pool file. ``tasks`` are TaskSpec mappings with absolute paths and a name."""

    model: str
    tasks: list[dict]
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)
    sketch_size: int = 200_000
    seed: int = 42
    dtype: str = "float32"
    target_modules: list[str] | None = None
    source: str = ""  # the pool file, for messages

    @property
    def names(self) -> list[str]:
        return [t["name"] for t in self.tasks]


POOL_KEYS = ("model", "tasks", "calibration", "sketch_size", "seed", "dtype", "target_modules")
_DTYPES = ("float32", "bfloat16", "float16")


def _make_spec(entry: Mapping):
    """A `slice_trl.tasks.TaskSpec` from a mapping (its own validation; errors re-raised as
    PoolError)."""
    from .tasks import TaskSpec

    try:
        return TaskSpec.from_dict(dict(entry))
    except (TypeError, ValueError) as exc:
        raise PoolError(f"task {entry.get('name') or entry.get('task') or entry.get('path')!r}: {exc}") from exc


def _spec_dict(spec) -> dict:
    """A TaskSpec as a plain mapping without unset (None) fields, for hashing."""
    return {k: v for k, v in spec.to_dict().items() if v is not None}


def _resolve(base: Path, value: str) -> str:
    p = Path(os.path.expanduser(str(value)))
    return str(p if p.is_absolute() else (base / p).resolve())


def _task_identity(spec) -> str:
    """What makes two pool entries the same task: the data they read and how they split it,
    not their names or metrics (a Super-NI or TRACE location is resolved to its file/folder, so
    ``path: dir, task: task088`` equals ``path: dir/task088_....json``)."""
    from .tasks import resolve_task_dir, resolve_task_file

    data = _spec_dict(spec)
    data.pop("name", None)
    data.pop("metric", None)
    if spec.path is not None and spec.source == "superni":
        data["path"], data["task"] = str(Path(resolve_task_file(spec.path, spec.task)).resolve()), None
    elif spec.path is not None and spec.source == "trace":
        data["path"], data["task"] = str(Path(resolve_task_dir(spec.path, spec.task)).resolve()), None
    return json.dumps(data, sort_keys=True, default=str)


def _superni_dir_entries(directory: Path) -> list[dict]:
    files = sorted(p for p in directory.glob("*.json") if p.is_file())
    if not files:
        raise PoolError(f"tasks={str(directory)!r} is a directory without .json task files; put natural-instructions "
                        "task files (tasks/<name>.json) there or list the tasks explicitly.")
    return [{"name": f.stem, "source": "superni", "path": str(f)} for f in files]


def load_pool(path: str | Path, length: int | None = None, sketch_size: int | None = None,
              seed: int | None = None) -> Pool:
    """Read and validate a pool YAML file without loading any model or data set.

    Format::

        model: smollm2-135m-instruct      # model name, Hub id or local directory
        tasks: ../data/superni            # a directory of natural-instructions task files, or
        # tasks:                          # a list of task specs (slice_trl.tasks.TaskSpec fields)
        #   - {name: task088, source: superni, path: ../data/superni/task088_identify_typo_verification.json}
        calibration: {batches: 4, batch_size: 4, max_length: 256}
        sketch_size: 200000               # CountSketch size k
        seed: 42                          # sketch hashes and calibration sampling
        dtype: float32                    # optional
        target_modules: [q_proj, ...]     # optional; default: the seven Llama projections

    Relative paths are taken relative to the pool file's directory. ``length``, ``sketch_size``
    and ``seed`` (command-line values) are checked here too; the latter two override the file.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PoolError(f"Pool file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PoolError(f"Pool file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise PoolError(f"Pool file {str(path)!r} must be a mapping with keys {list(POOL_KEYS)}.")
    _unknown_keys(f"Pool file {str(path)!r}", data, POOL_KEYS)
    base = path.resolve().parent

    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise PoolError(f"Pool file {str(path)!r}: 'model' is missing; set model: <name, Hub id or local directory>, "
                        "e.g. model: smollm2-135m-instruct.")
    if model.startswith((".", "/", "~")) or (base / model).exists():
        model = _resolve(base, model)
        if not Path(model).exists():
            raise PoolError(f"model={data['model']!r}: the directory {model!r} does not exist.")

    raw_tasks = data.get("tasks")
    if raw_tasks is None:
        raise PoolError(f"Pool file {str(path)!r}: 'tasks' is missing; give a directory of natural-instructions task "
                        "files or a list of task specs ({name, source, path, ...}).")
    if isinstance(raw_tasks, str):
        directory = Path(_resolve(base, raw_tasks))
        if not directory.is_dir():
            raise PoolError(f"tasks={raw_tasks!r}: {str(directory)!r} is not a directory.")
        entries = _superni_dir_entries(directory)
    elif isinstance(raw_tasks, list):
        entries = []
        for i, entry in enumerate(raw_tasks):
            if not isinstance(entry, Mapping):
                raise PoolError(f"tasks[{i}]={entry!r} must be a mapping of task-spec fields, e.g. "
                                "{name: task088, source: superni, path: tasks/task088.json}.")
            entry = dict(entry)
            if entry.get("path") is not None:
                entry["path"] = _resolve(base, entry["path"])
            entries.append(entry)
    else:
        raise PoolError(f"tasks must be a directory (string) or a list of task specs, not {type(raw_tasks).__name__}.")

    tasks: list[dict] = []
    seen_names: dict[str, int] = {}
    seen_data: dict[str, str] = {}
    for i, entry in enumerate(entries):
        # TaskSpec validates the entry here, before any model is loaded
        parsed = _make_spec(entry)
        name = parsed.display_name
        # the entry as written (absolute paths, name filled in) is what the recipe repeats
        spec = {"name": name, **{k: v for k, v in entry.items() if k != "name"}}
        if name in seen_names:
            raise PoolError(f"Duplicate task name {name!r} (tasks[{seen_names[name]}] and tasks[{i}]); every task of "
                            "the pool must appear once.")
        seen_names[name] = i
        ident = _task_identity(parsed)
        if ident in seen_data:
            where = parsed.path or parsed.dataset_id or parsed.task
            raise PoolError(f"Duplicate task: {name!r} reads the same data as {seen_data[ident]!r} ({where}); "
                            "remove one of them from the pool.")
        seen_data[ident] = name
        tasks.append(spec)

    calibration = CalibrationConfig.from_dict(data.get("calibration"))
    k = sketch_size if sketch_size is not None else data.get("sketch_size", 200_000)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < _HASH_PRIME:
        raise PoolError(f"sketch_size k={k!r} must be an integer >= 1 (the reference uses 200000; larger = closer "
                        "to the exact cosine) and below 2^31 - 1.")
    s = seed if seed is not None else data.get("seed", 42)
    if isinstance(s, bool) or not isinstance(s, int):
        raise PoolError(f"seed={s!r} must be an integer.")
    dtype = data.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise PoolError(f"dtype={dtype!r} is not valid; choose one of {list(_DTYPES)}.")
    targets = data.get("target_modules")
    if targets is not None and (not isinstance(targets, list) or not targets
                                or not all(isinstance(t, str) for t in targets)):
        raise PoolError(f"target_modules={targets!r} must be a non-empty list of module names, e.g. [q_proj, v_proj].")
    pool = Pool(model=model, tasks=tasks, calibration=calibration, sketch_size=k, seed=s, dtype=dtype,
                target_modules=targets, source=str(path))
    if length is not None:
        check_length(length, len(tasks))
    return pool


def check_length(length: int, pool_size: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise PoolError(f"--length N={length!r} must be an integer >= 2 (a subset is scored by its pairwise cosines).")
    if length > pool_size:
        raise PoolError(f"--length N={length} is larger than the pool ({pool_size} tasks); choose N <= {pool_size} "
                        "or add tasks to the pool.")


# --------------------------------------------------------------------------------------------
# Per-task gradient sketch cache
# --------------------------------------------------------------------------------------------

def _file_fingerprint(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def model_fingerprint(model: str) -> list:
    """Model identity for the cache key: the name, plus size and mtime of a local checkpoint's
    config and weight files (so a re-saved model at the same path is not mistaken for the old)."""
    p = Path(model)
    if not p.is_dir():
        return [model]
    files = sorted(f for f in p.iterdir() if f.is_file() and (f.name == "config.json"
                   or f.suffix in (".safetensors", ".bin", ".gguf", ".pt")))
    return [str(p.resolve())] + [_file_fingerprint(f) for f in files]


def _data_fingerprint(spec: Mapping) -> list:
    """Size and mtime of the task's local data (a file, or the files of a directory)."""
    if not spec.get("path"):
        return []
    p = Path(spec["path"])
    if p.is_file():
        return [_file_fingerprint(p)]
    if p.is_dir():
        if spec.get("source") == "superni" and spec.get("task"):
            from .tasks import resolve_task_file

            return [_file_fingerprint(Path(resolve_task_file(p, spec["task"])))]
        return [_file_fingerprint(f) for f in sorted(p.rglob("*")) if f.is_file()]
    return []


def cache_key(pool: Pool, spec: Mapping) -> str:
    """Hex digest of everything the task's sketch depends on."""
    payload = {
        "version": CACHE_VERSION,
        "model": model_fingerprint(pool.model),
        "dtype": pool.dtype,
        "target_modules": pool.target_modules,
        "task": _spec_dict(_make_spec(spec)),  # every TaskSpec field, defaults included
        "data": _data_fingerprint(spec),
        "calibration": dataclasses.asdict(pool.calibration),
        "sketch_size": pool.sketch_size,
        "seed": pool.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class GradientCache:
    """One safetensors file per task: ``sketch`` (k,) float64 and ``sq_norm`` (1,) float64, with
    the cache key and the calibration record in the file's metadata. Written atomically (temp
    file + rename), so an interrupted run leaves either a complete entry or none."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, name: str, key: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        return self.directory / f"{safe}.{key[:16]}.safetensors"

    def load(self, name: str, key: str) -> tuple[torch.Tensor, float, dict] | None:
        from safetensors import safe_open

        file = self.path(name, key)
        if not file.exists():
            return None
        try:
            with safe_open(str(file), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("key") != key:
                    return None
                sketch = fh.get_tensor("sketch")
                sq_norm = float(fh.get_tensor("sq_norm")[0])
        except Exception as exc:  # noqa: BLE001 - a corrupt entry is recomputed, not fatal
            logger.warning("Ignoring unreadable cache entry %s (%s); recomputing.", file, exc)
            return None
        return sketch, sq_norm, json.loads(meta.get("record", "{}"))

    def save(self, name: str, key: str, sketch: torch.Tensor, sq_norm: float, record: dict) -> Path:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        file = self.path(name, key)
        tmp = file.with_name(file.name + f".tmp{os.getpid()}")
        save_file({"sketch": sketch.contiguous(), "sq_norm": torch.tensor([sq_norm], dtype=torch.float64)}, str(tmp),
                  metadata={"key": key, "record": json.dumps(record, default=str)})
        tmp.replace(file)
        return file


# --------------------------------------------------------------------------------------------
# Gradient pass
# --------------------------------------------------------------------------------------------

def _resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def task_sketches(pool: Pool, cache: GradientCache, device: str | None = "auto", progress: bool = True
                  ) -> tuple[torch.Tensor, np.ndarray, list[dict]]:
    """CountSketch and exact squared norm of every task's mean base-model gradient.

    Cached tasks are read back; the model is loaded only if some task is missing. Each missing
    task is built with `slice_trl.tasks.build_task`, its TRAIN split alone is tokenised as
    SFTTrainer does (`prepare_sft_dataset`), ``calibration.batches`` seeded mini-batches are
    drawn from it and the mean gradient of the target weights is taken with
    `estimate_mean_gradients`, then sketched and written to the cache before the next task.

    Returns:
        (sketches (M, k) float64, squared norms (M,) float64, one record per task with
        ``cached``, ``n_batches``, ``label_tokens``, ``grad_norm``, ``seconds`` and the task's
        loader ``info``).
    """
    from tqdm.auto import tqdm

    sketcher = CountSketch(pool.sketch_size, pool.seed)
    keys = [cache_key(pool, spec) for spec in pool.tasks]
    loaded = [cache.load(spec["name"], key) for spec, key in zip(pool.tasks, keys)]
    missing = [i for i, hit in enumerate(loaded) if hit is None]
    sketches: list[torch.Tensor | None] = [hit[0] if hit else None for hit in loaded]
    sq_norms = [hit[1] if hit else 0.0 for hit in loaded]
    records = [dict(hit[2], cached=True) if hit else {} for hit in loaded]
    if missing:
        logger.info("%d of %d task gradients cached; computing %d.", len(loaded) - len(missing), len(loaded), len(missing))
        from .batching import default_collator, prepare_sft_dataset, sample_batches
        from .kernels.gradients import check_finite, estimate_mean_gradients, target_weights
        from .models import load_model_and_tokenizer
        from .tasks import build_task

        cal = pool.calibration
        dev = _resolve_device(device)
        model, tokenizer = load_model_and_tokenizer(pool.model, dtype=pool.dtype)
        model.to(dev)
        weights = target_weights(model, pool.target_modules)
        n_params = sum(w.numel() for w in weights.values())
        if pool.sketch_size >= n_params:
            logger.warning("sketch_size=%d >= the %d target weights: the sketch does not compress; a smaller k "
                           "gives the same accuracy class at less cost.", pool.sketch_size, n_params)
        collator = default_collator(tokenizer)
        bar = tqdm(total=len(pool.tasks), initial=len(pool.tasks) - len(missing), desc="task gradients",
                   unit="task", disable=not progress)
        try:
            for i in missing:
                spec = pool.tasks[i]
                bar.set_postfix_str(spec["name"])
                start = time.perf_counter()
                task = build_task(_make_spec(spec), tokenizer, cal.max_length)
                # calibration reads the TRAIN split only: the held-out split stays unseen
                prepared = prepare_sft_dataset(task.train, tokenizer, cal.max_length, cal.completion_only_loss)
                batches = sample_batches(prepared, collator, cal.batch_size, cal.batches, pool.seed)
                label_tokens = int(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches))
                if label_tokens == 0:
                    raise ValueError(f"Task {spec['name']!r}: the calibration sample has no label tokens (every "
                                     f"completion was truncated away); raise calibration.max_length.")
                grads, n_batches = estimate_mean_gradients(model, batches, weights, cal.micro_batch_size)
                check_finite(grads, f"task {spec['name']!r}")
                sketch, sq_norm = sketcher.sketch(grads)
                del grads
                records[i] = {
                    "cached": False, "n_batches": n_batches, "batch_size": cal.batch_size, "label_tokens": label_tokens,
                    "n_train": len(task.train), "grad_norm": math.sqrt(sq_norm), "target_params": n_params,
                    "seconds": round(time.perf_counter() - start, 3), "info": task.info,
                }
                sketches[i], sq_norms[i] = sketch, sq_norm
                cache.save(spec["name"], keys[i], sketch, sq_norm, records[i])
                bar.update(1)
        finally:
            bar.close()
    for spec, rec, sq in zip(pool.tasks, records, sq_norms):
        if sq == 0.0:
            logger.warning("Task %r has a zero gradient; its cosines are 0.", spec["name"])
    return torch.stack(sketches), np.asarray(sq_norms, dtype=np.float64), records


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

def _axis_labels(names: Sequence[str]) -> list[str]:
    """Short Super-NI ids (``task088``) when they are unique in the pool, else the full names."""
    import re

    short = [m.group(1) if (m := re.match(r"^(task\d+)_", n)) else n for n in names]
    return short if len(set(short)) == len(short) else list(names)


def plot_heatmap(cos: np.ndarray, names: Sequence[str], path: str | Path, highlight: Sequence[str] = (),
                 title: str = "") -> Path:
    """Cosine heatmap (diverging colour map centred at 0, diagonal masked); the names in
    ``highlight`` (the best subset) are drawn in bold red. The figure grows with the number of
    tasks and the label length so cells stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = len(names)
    labels = _axis_labels(names)
    shown = np.ma.masked_array(cos, mask=np.eye(m, dtype=bool))
    off = cos[~np.eye(m, dtype=bool)]
    lim = float(np.abs(off).max()) if off.size and np.abs(off).max() > 0 else 1.0
    cell = 0.5 if m <= 16 else 0.28  # inches; annotated cells need room for "+0.00"
    font = 8 if m <= 30 else 6
    label_in = 0.075 * (font / 8) * max(len(lab) for lab in labels) + 0.3
    fig, ax = plt.subplots(figsize=(label_in + m * cell + 1.6, label_in + m * cell + 0.9), layout="constrained")
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#dddddd")  # masked diagonal in grey
    im = ax.imshow(shown, cmap=cmap, vmin=-lim, vmax=lim)
    ax.set_xticks(range(m), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(m), labels, fontsize=font)
    marked = {lab for lab, name in zip(labels, names) if name in set(highlight)}
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for tick in ticks:
            if tick.get_text() in marked:
                tick.set_color("#b2182b")
                tick.set_fontweight("bold")
    if m <= 16:
        for i in range(m):
            for j in range(m):
                if i != j:
                    ax.text(j, i, f"{cos[i, j]:+.2f}", ha="center", va="center", fontsize=6.5,
                            color="white" if abs(cos[i, j]) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="gradient cosine")
    ax.set_title(title, fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def recipe_dict(pool: Pool, ordered_names: Sequence[str]) -> dict:
    """The recipe of a mined sequence: the pool's model, the tasks' specs in training order and
    SLICE initialisation."""
    by_name = {t["name"]: t for t in pool.tasks}
    return {
        "model_name_or_path": pool.model,
        "tasks": [dict(by_name[n]) for n in ordered_names],
        "init": {"method": "slice"},
    }


@dataclasses.dataclass
class MiningResult:
    names: list[str]  # pool tasks, in pool order
    cosines: np.ndarray  # (M, M)
    top: list[dict]  # best first: {"rank", "tasks" (alphabetical), "mean_cosine", "min_pair", "max_pair"}
    order: list[str]  # training order of the best subset
    order_consecutive: list[float]  # cosine of each consecutive pair of `order`
    records: list[dict]
    search_seconds: float
    n_subsets: int
    files: dict[str, str]


def mine_pool(pool: Pool, length: int, top: int = 10, output_dir: str | Path = "outputs/mine",
              cache_dir: str | Path | None = None, device: str | None = "auto", progress: bool = True,
              chunk_size: int = 1 << 20) -> MiningResult:
    """Run the whole mining pipeline on a validated pool and write its outputs to ``output_dir``:
    ``cosines.csv``, ``cosine_heatmap.png``, ``top_subsets.json``, ``recipe.yaml`` and
    ``mining_summary.json``. The gradient cache defaults to ``output_dir/grad_cache``."""
    import yaml

    check_length(length, len(pool.tasks))
    _positive_int("--top K", top)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache = GradientCache(cache_dir if cache_dir is not None else output_dir / "grad_cache")

    sketches, sq_norms, records = task_sketches(pool, cache, device=device, progress=progress)
    names = pool.names
    cos = cosine_matrix(sketches, sq_norms)

    start = time.perf_counter()
    idx, means = top_subsets(cos, length, top, chunk_size=chunk_size, progress=progress)
    search_seconds = time.perf_counter() - start

    top_rows = []
    for rank, (subset, mean) in enumerate(zip(idx, means), start=1):
        members = sorted(subset.tolist(), key=lambda i: names[i])
        sub = cos[np.ix_(members, members)][np.triu_indices(length, 1)]
        top_rows.append({"rank": rank, "tasks": [names[i] for i in members], "mean_cosine": float(mean),
                         "min_pair": float(sub.min()), "max_pair": float(sub.max())})
    best = sorted(idx[0].tolist(), key=lambda i: names[i])  # alphabetical: fixes best_order's tie-break
    local, _ = best_order(cos[np.ix_(best, best)])
    order_idx = [best[i] for i in local]
    order = [names[i] for i in order_idx]
    consecutive = [float(cos[a, b]) for a, b in zip(order_idx, order_idx[1:])]

    files = {}
    csv = output_dir / "cosines.csv"
    with open(csv, "w", encoding="utf-8") as fh:
        fh.write("task," + ",".join(names) + "\n")
        for name, row in zip(names, cos):
            fh.write(name + "," + ",".join(f"{v:.6f}" for v in row) + "\n")
    files["cosines"] = str(csv)
    files["heatmap"] = str(plot_heatmap(
        cos, names, output_dir / "cosine_heatmap.png", highlight=order,
        title=f"Base-model gradient cosines\n{Path(pool.model).name}, CountSketch k={pool.sketch_size}\n"
              f"best {length}-subset (red): mean {top_rows[0]['mean_cosine']:+.4f}"))
    top_file = output_dir / "top_subsets.json"
    top_file.write_text(json.dumps(top_rows, indent=2) + "\n", encoding="utf-8")
    files["top_subsets"] = str(top_file)

    recipe = output_dir / "recipe.yaml"
    header = (
        f"# Mined by `python -m slice_trl.mine {pool.source} --length {length}` (slice_trl.mining).\n"
        f"# Lowest mean pairwise base-model gradient cosine among all C({len(names)},{length}) subsets: "
        f"{top_rows[0]['mean_cosine']:+.4f}.\n"
        "# Training order: the order minimising the sum of consecutive-pair cosines "
        f"(sum {sum(consecutive):+.4f}; the reference returns the set alphabetically).\n"
    )
    recipe.write_text(header + yaml.safe_dump(recipe_dict(pool, order), sort_keys=False), encoding="utf-8")
    files["recipe"] = str(recipe)

    summary = output_dir / "mining_summary.json"
    files["summary"] = str(summary)
    summary.write_text(json.dumps({
        "pool": pool.source, "model": pool.model, "length": length, "top": top,
        "sketch_size": pool.sketch_size, "seed": pool.seed, "calibration": dataclasses.asdict(pool.calibration),
        "target_modules": pool.target_modules, "n_subsets": math.comb(len(names), length),
        "search_seconds": search_seconds, "best": top_rows[0], "order": order,
        "order_rule": "minimise the sum of consecutive-pair cosines (ties: lexicographically smallest names)",
        "order_consecutive_cosines": consecutive,
        "tasks": {name: rec for name, rec in zip(names, records)}, "files": files,
    }, indent=2, default=str) + "\n", encoding="utf-8")
    return MiningResult(names=names, cosines=cos, top=top_rows, order=order, order_consecutive=consecutive,
                        records=records, search_seconds=search_seconds, n_subsets=math.comb(len(names), length),
                        files=files)
