"""LoRAM: data-free DST-I bases, rescaled (variance-matched), absorbed."""

from __future__ import annotations

from slice_trl.utils.registry import initializers
from slice_trl.kernels.decompose import loram_bases
from slice_trl.models.lora import check_rank, lora_layers
from slice_trl.initializers.base import InitReport, RescaledInitializer


@initializers.register("loram", display_name="LoRAM", rescaled=True)
class LoramInitializer(RescaledInitializer):
    """LoRAM: orthonormal DST-I bases (lowest r frequencies), rescaled, absorbed."""

    method = "loram"
    needs_2r = False

    def _bases(self, name, layer, r):
        d_out, d_in = layer.out_features, layer.in_features
        phi_b, phi_a = loram_bases(d_out, d_in, r)
        device = layer.lora_A[next(iter(layer.lora_A))].weight.device
        return phi_b.to(device), phi_a.to(device)

    def __call__(self, model, adapter_name, current_batches=None, previous_batches=None) -> InitReport:
        layers = lora_layers(model, adapter_name)
        check_rank(layers, adapter_name, needs_2r=False)
        return self._finish(model, adapter_name, layers, InitReport(self.method, adapter_name))
