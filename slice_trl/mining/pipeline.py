"""The whole mining run (`mine_pool`): sketches, cosines, subset search, training order, and the
files it writes (cosines.csv, cosine_heatmap.png, top_subsets.json, recipe.yaml, mining_summary.json)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from slice_trl.mining.cache import GradientCache
from slice_trl.mining.gradient_pass import task_sketches
from slice_trl.mining.outputs import plot_heatmap, recipe_dict
from slice_trl.mining.pool import Pool, check_length, positive_int
from slice_trl.mining.search import best_order, top_subsets
from slice_trl.mining.sketch import cosine_matrix


@dataclasses.dataclass
class MiningResult:
    """What `mine_pool` found, and the paths of the files it wrote."""

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
    positive_int("--top K", top)
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
