"""Benchmark: exhaustive scoring of all C(46, 5) = 1,370,754 five-task subsets from the 1,035
pair scores of a 46-task pool (the paper's search size, docs/method.md "Mining NI-Seq-Opposite").

Times `slice_trl.mining.top_subsets` (enumeration, scoring by mean pairwise cosine, top-10)
on a random symmetric cosine matrix, best of 3 runs, and checks the winner against a direct
recomputation. Writes benchmarks/results/mine_search.json. Target: <= 5 s.

    python benchmarks/bench_mine_search.py [--pool 46] [--length 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from slice_trl.mining import top_subsets

TARGET_SECONDS = 5.0


def random_cosines(m: int, seed: int) -> np.ndarray:
    """(m, m) symmetric matrix with off-diagonal values in [-1, 1] and a unit diagonal."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1.0, 1.0, size=(m, m))
    c = np.triu(a, 1)
    c = c + c.T
    np.fill_diagonal(c, 1.0)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=46)
    ap.add_argument("--length", type=int, default=5)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mine_search.json"))
    args = ap.parse_args()

    cos = random_cosines(args.pool, args.seed)
    top_subsets(cos, args.length, args.top)  # warm-up (imports, allocator)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        idx, means = top_subsets(cos, args.length, args.top)
        times.append(time.perf_counter() - start)
    best = tuple(int(i) for i in idx[0])
    check = float(np.mean([cos[i, j] for i, j in combinations(best, 2)]))
    assert abs(check - means[0]) < 1e-12, (check, means[0])

    result = {
        "benchmark": "mine_search",
        "what": f"score all C({args.pool},{args.length}) subsets by mean pairwise cosine from "
                f"{args.pool * (args.pool - 1) // 2} pair scores, keep top {args.top}",
        "n_subsets": math.comb(args.pool, args.length),
        "n_pairs": args.pool * (args.pool - 1) // 2,
        "seconds_best": min(times),
        "seconds_all": times,
        "subsets_per_second": math.comb(args.pool, args.length) / min(times),
        "target_seconds": TARGET_SECONDS,
        "meets_target": min(times) <= TARGET_SECONDS,
        "best_subset": list(best),
        "best_mean_cosine": float(means[0]),
        "machine": {
            "cpu_cores_visible": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "note": "shared machine: other jobs may run concurrently",
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"C({args.pool},{args.length}) = {result['n_subsets']:,} subsets: best of {args.repeats} = "
          f"{min(times):.3f} s (target <= {TARGET_SECONDS} s) -> {out}")


if __name__ == "__main__":
    main()
