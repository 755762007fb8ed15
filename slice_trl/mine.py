"""``python -m slice_trl.mine POOL.yaml --length N --top K``: mine adversarial task sequences.

Thin command line over `slice_trl.mining` (docs/method.md, "Mining NI-Seq-Opposite"): per-task
base-model gradients (CountSketch, cached per task), pairwise cosines, exhaustive search of the
N-subsets with the lowest mean pairwise cosine, a heatmap and a recipe for the best sequence.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

PROG = "python -m slice_trl.mine"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Mine the N-task subset of a pool whose base-model gradients conflict most (lowest mean "
                    "pairwise cosine), as in the paper's NI-Seq-Opposite sequences.",
        epilog="Pool file: model, tasks (a directory of natural-instructions files or a list of task specs), "
               "calibration {batches, batch_size, max_length}, sketch_size, seed. See slice_trl.mining.load_pool.",
    )
    p.add_argument("pool", help="pool YAML file")
    p.add_argument("--length", "-n", type=int, required=True, help="tasks per sequence (N)")
    p.add_argument("--top", "-k", type=int, default=10, help="how many best subsets to report (default 10)")
    p.add_argument("--output-dir", "-o", default=None,
                   help="where outputs go (default outputs/mine/<pool file name>)")
    p.add_argument("--cache-dir", default=None,
                   help="per-task gradient cache (default <output-dir>/grad_cache); reruns skip cached tasks")
    p.add_argument("--sketch-size", type=int, default=None, help="CountSketch size k (overrides the pool file)")
    p.add_argument("--seed", type=int, default=None, help="seed (overrides the pool file)")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    from slice_trl.mining import PoolError, load_pool, mine_pool

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # one bar per task from our own loop is enough: silence datasets' per-map bars
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        if args.top < 1:
            raise PoolError(f"--top K={args.top} must be >= 1.")
        # everything about the pool and the arguments is checked before any model is loaded
        pool = load_pool(args.pool, length=args.length, sketch_size=args.sketch_size, seed=args.seed)
        output_dir = Path(args.output_dir or Path("outputs") / "mine" / Path(args.pool).stem)
        result = mine_pool(pool, args.length, args.top, output_dir=output_dir, cache_dir=args.cache_dir,
                           device=args.device, progress=not args.no_progress)
    except (PoolError, ValueError, FileNotFoundError) as exc:
        if args.traceback or os.environ.get("SLICE_TRL_TRACEBACK"):
            raise
        parser.exit(2, f"{PROG}: error: {exc}\n")

    cached = sum(1 for r in result.records if r.get("cached"))
    print(f"\nPool: {len(result.names)} tasks ({cached} gradients from cache), model {pool.model}")
    print(f"Searched all {result.n_subsets:,} {args.length}-subsets in {result.search_seconds:.2f} s "
          f"(lowest mean pairwise cosine first):")
    for row in result.top:
        print(f"  {row['rank']:>3}  {row['mean_cosine']:+.4f}  [{row['min_pair']:+.3f}, {row['max_pair']:+.3f}]  "
              + ", ".join(row["tasks"]))
    print("Training order of the best subset (minimises the sum of consecutive-pair cosines; "
          "the reference lists the set alphabetically):")
    print("  " + " -> ".join(result.order))
    print("  consecutive cosines: " + ", ".join(f"{c:+.3f}" for c in result.order_consecutive))
    for what, path in result.files.items():
        print(f"{what:>12}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
