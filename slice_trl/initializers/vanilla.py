"""Vanilla LoRA init: PEFT's default (A Kaiming-uniform, B = 0), seeded; nothing to absorb."""

from __future__ import annotations

import time

from slice_trl.utils.registry import initializers
from slice_trl.models.lora import lora_layers
from slice_trl.configs.settings import InitConfig
from slice_trl.initializers.base import Batches, InitReport, module_entry, vanilla_reset


@initializers.register("vanilla", display_name="vanilla LoRA")
class VanillaInitializer:
    """PEFT's default LoRA init, reseeded so a run is reproducible; no rescaling, no absorption."""

    method = "vanilla"

    def __init__(self, config: InitConfig):
        self.config = config

    def __call__(self, model, adapter_name: str, current_batches: Batches | None = None,
                 previous_batches: Batches | None = None) -> InitReport:
        report = InitReport(self.method, adapter_name)
        t0 = time.perf_counter()
        for name, layer in lora_layers(model, adapter_name).items():
            vanilla_reset(layer, adapter_name, self.config.seed, name)
            report.modules[name] = module_entry(layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight,
                                                 None, False)
        report.timings["init"] = time.perf_counter() - t0
        return report
