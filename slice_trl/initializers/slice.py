"""SLICE (Pasquali, Barros et al., 2026): G_cur, G_prev -> PCGrad-c -> LoRA-GA slicing ->
variance-matched rescaling -> absorption."""

from __future__ import annotations

import time

import torch

from slice_trl.utils.registry import initializers
from slice_trl.kernels.decompose import lora_ga_slices, module_seed
from slice_trl.kernels.gradients import check_finite
from slice_trl.models.gradients import estimate_mean_gradients, target_weights
from slice_trl.kernels.surgery import reconcile
from slice_trl.models.lora import check_rank, lora_layers
from slice_trl.initializers.base import Batches, InitReport, RescaledInitializer, non_empty


@initializers.register("slice", uses_gradients=True, needs_2r=True, display_name="SLICE", has_gate=True,
                       rescaled=True)
class SliceInitializer(RescaledInitializer):
    """SLICE: gradient surgery of G_cur against G_prev, then LoRA-GA slicing, rescaling and
    absorption. With c = 0 or no previous-task batches it is exactly LoRA-GA."""

    method = "slice"

    def _bases(self, name, layer, r):
        g = self._grads.pop(name)  # free each module's gradient as soon as it is used
        if not torch.any(g):
            return None
        cfg = self.config
        return lora_ga_slices(g, r, cfg.svd_oversample, cfg.svd_niter, seed=module_seed(cfg.seed, name))

    def _release(self, name):
        self._grads.pop(name, None)

    def _use_previous(self) -> bool:
        return self.config.c > 0 and self.config.prev_steps > 0

    def __call__(self, model, adapter_name: str, current_batches: Batches,
                 previous_batches: Batches | None = None) -> InitReport:
        cfg = self.config
        layers = lora_layers(model, adapter_name)
        check_rank(layers, adapter_name, needs_2r=True)
        weights = target_weights(model, adapter_name=adapter_name)
        report = InitReport(self.method, adapter_name)
        g_prev = None
        previous_batches = non_empty(previous_batches)
        if previous_batches is not None and self._use_previous():
            # G_prev first, so it can sit in CPU memory / bf16 while G_cur is estimated.
            t0 = time.perf_counter()
            g_prev, report.n_batches_prev = estimate_mean_gradients(
                model, previous_batches, weights, cfg.micro_batch_size, cfg.activation_checkpointing,
                store_dtype=getattr(torch, cfg.prev_grad_dtype),
                store_device="cpu" if cfg.prev_grad_device == "cpu" else None, progress="G_prev")
            report.timings["grad_prev"] = time.perf_counter() - t0
            check_finite(g_prev, "previous-task")
        t0 = time.perf_counter()
        g_cur, report.n_batches_cur = estimate_mean_gradients(
            model, current_batches, weights, cfg.micro_batch_size, cfg.activation_checkpointing, progress="G_cur")
        report.timings["grad_cur"] = time.perf_counter() - t0
        check_finite(g_cur, "current-task")
        t0 = time.perf_counter()
        surgery = reconcile(g_cur, g_prev, cfg.c, cfg.projection)
        report.surgery = surgery.summary()
        report.timings["surgery"] = time.perf_counter() - t0
        del g_prev
        self._grads = g_cur
        try:
            return self._finish(model, adapter_name, layers, report)
        finally:
            self._grads = {}
