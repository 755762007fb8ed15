"""The gradient pass: per task, the mean base-model gradient on a calibration sample, sketched
and cached (`task_sketches`); the model is loaded only when some task is not cached."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from slice_trl.mining.cache import GradientCache, cache_key
from slice_trl.mining.pool import Pool, make_spec
from slice_trl.mining.sketch import CountSketch

logger = logging.getLogger(__name__)


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
        logger.info("%d of %d task gradients cached; computing %d.", len(loaded) - len(missing), len(loaded),
                    len(missing))
        from slice_trl.trainer.batching import default_collator, prepare_sft_dataset, sample_batches
        from slice_trl.kernels.gradients import check_finite
        from slice_trl.models.gradients import estimate_mean_gradients, target_weights
        from slice_trl.models.loading import load_model_and_tokenizer
        from slice_trl.tasks import build_task

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
                task = build_task(make_spec(spec), tokenizer, cal.max_length)
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
