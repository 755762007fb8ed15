"""Mining adversarial task sequences (docs/method.md, "Mining NI-Seq-Opposite").

Pipeline (`mine_pool` runs it; ``python -m slice_trl.mine`` is the command line):

1. per task i, the mean gradient g_i of the frozen base model over the target weights on a
   small calibration sample of the task's TRAIN split (`slice_trl.models.gradients` probe, the loss
   SFTTrainer trains with), compressed with a CountSketch of size k (`sketch.CountSketch`), keeping the
   EXACT squared norm ||g_i||^2 of the full gradient; one cache file per task (`cache.GradientCache`,
   filled by `gradient_pass.task_sketches`);
2. the pairwise cosine matrix cos_ij = <S g_i, S g_j> / (||g_i|| ||g_j||) (`sketch.cosine_matrix`);
3. exhaustive scoring of every N-subset by the mean of its pairwise cosines, from the M x M pair
   scores, keeping the K lowest (`search.top_subsets`, vectorised numpy over lexicographic chunks);
4. a training order for the best subset: the order minimising the sum of consecutive-pair
   cosines (`search.best_order`; the reference returns the set in alphabetical order), a cosine
   heatmap and a recipe YAML (`outputs`).

The pool file is read and validated by `pool.load_pool`; `pipeline.mine_pool` ties the steps together.
"""

from __future__ import annotations

from slice_trl.mining.cache import GradientCache
from slice_trl.mining.gradient_pass import task_sketches
from slice_trl.mining.pipeline import MiningResult, mine_pool
from slice_trl.mining.pool import CalibrationConfig, Pool, PoolError, check_length, load_pool
from slice_trl.mining.search import best_order, iter_subset_scores, top_subsets
from slice_trl.mining.sketch import CountSketch, cosine_matrix

__all__ = [
    "CalibrationConfig",
    "CountSketch",
    "GradientCache",
    "MiningResult",
    "Pool",
    "PoolError",
    "best_order",
    "check_length",
    "cosine_matrix",
    "iter_subset_scores",
    "load_pool",
    "mine_pool",
    "task_sketches",
    "top_subsets",
]
