"""LoRA initialisers behind one small interface (`base`), one module per initialiser, each
registered by name with its traits in `slice_trl.utils.registry.initializers`.

- SLICE (Pasquali, Barros et al., 2026): G_cur, G_prev -> PCGrad-c -> LoRA-GA slicing ->
  variance-matched rescaling -> absorption (`slice`).
- LoRA-GA, paper variant (Wang et al., 2024, as used by SLICE): the same with G_cur only (`lora_ga`).
- LoRAM: data-free DST-I bases, rescaled, absorbed (`loram`).
- Vanilla: PEFT's default (A Kaiming-uniform, B = 0), seeded; nothing to absorb (`vanilla`).

A new initialiser is one new module here (or in a package of your own, through the
``slice_trl.initializers`` entry point group) with ``@initializers.register(name, **traits)``.
"""

from slice_trl.initializers.base import (
    FAR_ABOVE,
    PAPER_RELATIVE_MAGNITUDE,
    Batches,
    InitReport,
    RescaledInitializer,
    build_initializer,
    relative_magnitudes,
    vanilla_reset,
    warn_if_far_from_paper,
)
from slice_trl.initializers.lora_ga import LoraGAInitializer
from slice_trl.initializers.loram import LoramInitializer
from slice_trl.initializers.slice import SliceInitializer
from slice_trl.initializers.vanilla import VanillaInitializer

__all__ = ["FAR_ABOVE", "PAPER_RELATIVE_MAGNITUDE", "Batches", "InitReport", "LoraGAInitializer", "LoramInitializer",
           "RescaledInitializer", "SliceInitializer", "VanillaInitializer", "build_initializer", "relative_magnitudes",
           "vanilla_reset", "warn_if_far_from_paper"]
