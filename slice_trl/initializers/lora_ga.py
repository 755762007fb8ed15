"""LoRA-GA, paper variant (Wang et al., 2024, as used by SLICE): SLICE's path with G_cur only."""

from __future__ import annotations

from slice_trl.utils.registry import initializers
from slice_trl.initializers.slice import SliceInitializer


@initializers.register("lora_ga", uses_gradients=True, needs_2r=True, display_name="LoRA-GA", rescaled=True)
class LoraGAInitializer(SliceInitializer):
    """LoRA-GA, the paper's variance-matched variant: SLICE without the previous-task gradient."""

    method = "lora_ga"

    def _use_previous(self) -> bool:
        return False
